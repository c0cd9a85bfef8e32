"""The local embedder: unit vectors that put paraphrases close and unrelated text far; config parsing."""
from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading

import numpy as np
import pytest

from gateway.thread_priority import BACKGROUND_NICE, MAX_NICE
from policies.cache.embedder import (
    MAX_CHARS,
    EmbedTimeout,
    LocalEmbedder,
    MemoEmbedder,
    digest_vector,
    make_embedder,
)


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


class CountingEmbedder:
    """A real-shaped inner embedder that records what it was asked (and can be made slow)."""

    name = "counting"

    def __init__(self, delay: asyncio.Event | None = None) -> None:
        self.seen: list[str] = []
        self.delay = delay

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        if self.delay is not None:
            await self.delay.wait()
        return np.ones((len(texts), 4), dtype=np.float32) / 2

    async def close(self) -> None:
        return None


async def test_memo_is_keyed_by_digest_bounded_in_bytes_and_clips_the_text() -> None:
    inner = CountingEmbedder()
    memo = MemoEmbedder(inner, max_bytes=3 * (16 + 200))
    big = "word " * 200_000
    await memo.embed_one(big)
    assert inner.seen == [big[:MAX_CHARS]]  # cut before the model sees (tokenises) it
    assert all(isinstance(key, bytes) and len(key) == 32 for key in memo._memo)  # no text is kept
    await memo.embed_one(big)
    assert len(inner.seen) == 1  # control: the memo answers the repeat
    for i in range(5):
        await memo.embed_one(f"question {i}")
    assert len(memo._memo) == 3 and memo.bytes == 3 * (16 + 200)


async def test_a_slow_embedding_times_out_as_a_miss() -> None:
    gate = asyncio.Event()
    memo = MemoEmbedder(CountingEmbedder(gate), timeout_s=0.02)
    with pytest.raises(EmbedTimeout):
        await memo.embed_one("slow")
    gate.set()
    assert (await memo.embed_one("slow")).shape == (4,)  # control: the same text embeds once it is fast


def test_a_digest_vector_is_the_same_for_one_question_and_far_from_others() -> None:
    """A long question's stand-in vector: unit length, stable for its digest, ~orthogonal to any other."""
    one, two = (hashlib.sha256(text.encode()).digest() for text in ("question one", "question two"))
    a = digest_vector(one, 384)
    assert a.shape == (384,) and a.dtype == np.float32
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5
    assert np.array_equal(a, digest_vector(one, 384))  # same digest, same vector: score 1.0
    assert float(a @ a) > 0.999
    others = [digest_vector(hashlib.sha256(f"other {i}".encode()).digest(), 384) for i in range(200)]
    assert max(abs(float(a @ b)) for b in [digest_vector(two, 384), *others]) < 0.35  # threshold: 0.95


async def test_the_memo_learns_the_vectors_length() -> None:
    memo = MemoEmbedder(CountingEmbedder())
    assert memo.dimension is None  # control: unknown before any embedding
    await memo.embed_one("hello")
    assert memo.dimension == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
async def test_the_model_runs_at_a_lower_cpu_priority_than_the_loop(local_embedder: LocalEmbedder) -> None:
    """The model runs without the GIL for tens of ms: its thread yields a core to the event loop."""
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    await local_embedder.embed(["warm"])
    model_thread = await asyncio.get_running_loop().run_in_executor(local_embedder._executor, nice)
    assert model_thread == min(nice() + BACKGROUND_NICE, MAX_NICE) > nice()  # control: the loop's own
