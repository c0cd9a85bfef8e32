"""gateway/long_arrays.py: a large body's long ``input`` array of strings parsed in pieces, with the one
parse's result (or its refusal)."""
from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import long_arrays
from gateway.decode import decode
from gateway.errors import LocalReply

ITEMS = [f"item {i}" for i in range(100_000)]  # 1.3 MB of JSON


def embeddings(inputs: Any, **extra: Any) -> bytes:
    return orjson.dumps({"model": "text-embedding-3-small", "input": inputs, **extra})


def test_a_long_array_of_strings_is_parsed_in_pieces_with_the_one_parse_result() -> None:
    raw = embeddings(ITEMS)
    split = long_arrays.cuts(raw)
    assert split is not None
    start, commas = split
    assert len(commas) > 10 and raw[start - 1:start] == b"["  # control: really in pieces
    edges = [start, *commas]
    assert all(high - low <= long_arrays.PIECE + 64 for low, high in zip(edges, edges[1:], strict=False))
    assert all(raw[c - 1:c + 2] == b'","' for c in commas)
    spaced = json.dumps({"input": ITEMS}).encode()  # ", " between the strings
    assert long_arrays.parse(spaced) == orjson.loads(spaced)
    assert len(long_arrays.cuts(spaced) or (0, [])) and len((long_arrays.cuts(spaced) or (0, []))[1]) > 10
    assert long_arrays.parse(raw) == orjson.loads(raw)
    assert decode(raw, "embeddings")[0] == orjson.loads(raw)


def test_small_bodies_and_other_shapes_are_not_cut() -> None:
    assert long_arrays.cuts(embeddings(ITEMS[:1000])) is None  # under MIN_BODY
    assert long_arrays.cuts(embeddings([[1, 2, 3]] * 100_000)) is None  # token arrays: not strings first
    assert long_arrays.cuts(embeddings("x " * 600_000)) is None  # one string
    assert long_arrays.cuts(embeddings(ITEMS)) is not None  # control


def test_an_element_that_is_not_a_string_means_the_whole_parse() -> None:
    raw = embeddings([*ITEMS[:50_000], {"k": [1]}, *ITEMS[50_000:]])
    assert long_arrays.cuts(raw) is not None  # the cut was tried
    assert long_arrays.parse(raw) is None
    with pytest.raises(LocalReply) as error:  # the schema's refusal of the whole parse's body
        decode(raw, "embeddings")
    assert error.value.status == 400


def test_a_nested_input_key_means_the_whole_parse() -> None:
    raw = orjson.dumps({"model": "m", "metadata": {"input": ITEMS}, "input": ["x"]})
    assert long_arrays.cuts(raw) is not None and long_arrays.parse(raw) is None
    assert decode(raw, "embeddings")[0] == orjson.loads(raw)


def test_the_marker_cannot_be_spelled_by_the_body() -> None:
    fake = long_arrays.MARK + "0" * 16
    raw = embeddings([fake, *ITEMS])
    body = long_arrays.parse(raw)
    assert body is not None and body["input"][0] == fake and body == orjson.loads(raw)


def test_a_bad_string_in_a_piece_is_the_whole_parse_400() -> None:
    raw = embeddings(ITEMS).replace(b"item 500", b"item \\x00", 1)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)  # control: the body really is bad
    assert long_arrays.parse(raw) is None
    with pytest.raises(LocalReply) as error:
        decode(raw, "embeddings")
    assert (error.value.status, error.value.code) == (400, "invalid_json")


_tricky = st.sampled_from(['","', '"]', "]", "[", ",", "\\", '"', "{", "}", ":", "\u0000", "é", "😀", " "])
_strings = st.lists(st.one_of(_tricky, st.text(max_size=6)), max_size=6).map("".join)
_elements: st.SearchStrategy[Any] = st.one_of(_strings, _strings, _strings, st.integers(-(2**63), 2**63 - 1),
                                             st.none(), st.lists(_strings, max_size=2))


@settings(max_examples=60, deadline=None)
@given(st.lists(_elements, min_size=1, max_size=8), st.integers(0, 100_000), st.booleans())
def test_any_input_array_decodes_as_one_parse_would(mixed: list[Any], at: int, compact: bool) -> None:
    """Tricky elements (separators, brackets, escapes inside strings; numbers, nulls, arrays) anywhere in a
    long array of strings: the pieces and the skeleton give orjson's result."""
    inputs = [*ITEMS[:at], *mixed, *ITEMS[at:]]
    body = {"model": "m", "input": inputs, "user": '","]'}
    raw = orjson.dumps(body) if compact else json.dumps(body).encode()
    parsed = long_arrays.parse(raw)
    assert parsed is None or parsed == orjson.loads(raw)
    if all(type(value) is str for value in mixed):
        assert parsed is not None  # control: the plain case is cut and put back
