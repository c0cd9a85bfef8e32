"""The local embedder: unit vectors that put paraphrases close and unrelated text far; config parsing."""
from __future__ import annotations

import numpy as np
import pytest

from policies.cache.embedder import LocalEmbedder, MemoEmbedder, make_embedder


async def test_local_vectors(local_embedder: LocalEmbedder) -> None:
    """384-d unit vectors; a paraphrase scores far above an unrelated sentence."""
    v = await local_embedder.embed(["How do I reverse a list in Python?", "How can I reverse a Python list?",
                                    "What is the tallest mountain?"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.95
    assert v[0] @ v[2] < 0.5


async def test_memo(local_embedder: LocalEmbedder) -> None:
    """A repeated text is embedded once."""
    memo = MemoEmbedder(local_embedder, size=2)
    a = await memo.embed_one("hello")
    assert await memo.embed_one("hello") is a


def test_make_embedder_validates() -> None:
    """Only local and upstream:<configured name>:<model> are accepted."""
    assert make_embedder("local", {}).name == "local"
    with pytest.raises(ValueError):
        make_embedder("upstream:nope:m", {})
    with pytest.raises(ValueError):
        make_embedder("cloud", {})
