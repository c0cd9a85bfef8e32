"""Embeddings cache helpers: token split adds up exactly; answers parse and reassemble in order."""
from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.cache.embeddings import assemble, inputs_of, parse_answer, split_tokens


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=20))
def test_split_adds_up(total: int, items: list[str]) -> None:
    """The per-input shares always add up to the provider's total."""
    assert sum(split_tokens(total, items, len)) == total


def test_parse_and_assemble_keep_order() -> None:
    """Rows in any order come back by index; reassembly writes each vector's JSON unchanged."""
    data = orjson.dumps({"data": [{"index": 1, "embedding": "QUJD"}, {"index": 0, "embedding": [0.5, 0.25]}],
                         "usage": {"prompt_tokens": 7}})
    parsed = parse_answer(data, 2)
    assert parsed == ([b"[0.5,0.25]", b'"QUJD"'], 7)
    out = orjson.loads(assemble("m", parsed[0], 7))
    assert [d["embedding"] for d in out["data"]] == [[0.5, 0.25], "QUJD"]
    assert out["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert parse_answer(data, 3) is None


def test_inputs_of() -> None:
    """Strings, lists of strings and token arrays are handled; anything else is left alone."""
    assert inputs_of({"input": "a"}) == ["a"]
    assert inputs_of({"input": [1, 2]}) == [[1, 2]]
    assert inputs_of({"input": ["a", [3]]}) == ["a", [3]]
    assert inputs_of({"input": ""}) is None and inputs_of({"input": [{"x": 1}]}) is None
