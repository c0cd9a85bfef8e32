"""gateway/long_strings.py: a large body's long strings decoded one by one, with the one parse's result."""
from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import long_strings
from gateway.decode import decode
from gateway.errors import LocalReply

LONG = " \n" * 40_000  # 120 KB of escaped JSON: cut
TEXT = "Ünïcode ✓ \"quoted\" \\ back\tslash 😀 " * 3_000  # escapes, non-ASCII, a surrogate pair in JSON


def chat(*contents: Any, **extra: Any) -> bytes:
    return orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": c} for c in contents],
                         **extra})


def test_long_values_are_cut_and_put_back_exactly() -> None:
    raw = chat(*([LONG] * 12), tools=[{"type": "function", "function": {"name": "f", "description": LONG}}])
    split = long_strings.cut(raw)
    assert split is not None and len(split[1]) == 13 and len(split[0]) < 10_000
    assert decode(raw, "chat")[0] == orjson.loads(raw)


def test_text_with_escapes_and_non_ascii_decodes_as_one_parse_would() -> None:
    for raw in (chat(*([TEXT] * 10)), json.dumps({"model": "m", "messages": [
            {"role": "user", "content": TEXT}] * 10}).encode()):  # orjson's UTF-8, and json's \\u escapes
        assert decode(raw, "chat")[0] == orjson.loads(raw)


def test_small_bodies_and_bodies_spelling_a_marker_are_not_cut() -> None:
    assert long_strings.cut(chat(LONG)) is None  # under MIN_BODY
    spelled = chat(*([LONG] * 12), note=long_strings.MARK + "0")
    assert long_strings.cut(spelled) is None
    assert decode(spelled, "chat")[0]["note"] == long_strings.MARK + "0"
    assert long_strings.cut(chat(*([LONG] * 12))) is not None  # control


def test_a_long_key_is_not_cut() -> None:
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                        "metadata": {"k" * 100_000: "v", "x": LONG * 10}})
    split = long_strings.cut(raw)
    assert split is not None and len(split[1]) == 1  # the value only
    assert decode(raw, "chat")[0] == orjson.loads(raw)


def test_a_quote_free_run_between_two_strings_falls_back_to_the_whole_parse() -> None:
    """Numbers between a closing and an opening quote: the skeleton does not parse, the whole body does."""
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "a": "x",
                        "numbers": [1] * 600_000, "b": "y"})
    split = long_strings.cut(raw)
    assert split is not None  # the cut was tried
    assert decode(raw, "chat")[0] == orjson.loads(raw)


def test_a_string_ending_in_an_escaped_quote_is_left_in_place() -> None:
    raw = chat(*(["a" * 100_000 + '\\"'] * 12))
    assert decode(raw, "chat")[0] == orjson.loads(raw)


def test_a_bad_escape_in_a_long_string_is_the_same_400() -> None:
    raw = chat(*([LONG] * 12)).replace(b"\\n", b"\\x", 1)
    with pytest.raises(LocalReply) as cut_error:
        decode(raw, "chat")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)  # control: the body really is bad
    assert (cut_error.value.status, cut_error.value.code) == (400, "invalid_json")


def test_put_back_reports_a_missing_marker() -> None:
    raw = chat(*([LONG] * 12))
    split = long_strings.cut(raw)
    assert split is not None
    skeleton, spans, tag = split
    body = orjson.loads(skeleton)
    assert long_strings.put_back(body, raw, spans + [(0, 1)], tag) is False  # one more span than markers
    body = orjson.loads(skeleton)
    assert long_strings.put_back(body, raw, spans, tag) is True and body == orjson.loads(raw)


def test_a_marker_spelled_with_escapes_is_only_text() -> None:
    """``\\u0067`` for the ``g``: the guard on the marker's bytes does not see it, but the cut's random tag
    is not in it, so it stays the body's text (it took the first long string's place before)."""
    raw = chat(*([LONG] * 12))[:-1] + b',"metadata":{"note":"\\u0000gw-lon\\u0067:0"}}'
    split = long_strings.cut(raw)
    assert split is not None and orjson.loads(raw)["metadata"]["note"] == long_strings.MARK + "0"  # control
    assert decode(raw, "chat")[0] == orjson.loads(raw)


_pieces = st.one_of(st.text(max_size=20), st.text(min_size=1, max_size=3).map(lambda t: t * 30_000))
_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(_pieces, st.integers(-(2**63), 2**64 - 1), st.booleans(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(_values, min_size=1, max_size=6))
def test_any_body_decodes_as_one_parse_would(values: list[Any]) -> None:
    filler = "f " * 550_000  # over MIN_BODY (not base64: a blob would be set aside)
    body = {"model": "m", "messages": [{"role": "user", "content": filler}], "extra": values}
    for raw in (orjson.dumps(body), json.dumps(body).encode()):
        assert decode(raw, "chat")[0] == orjson.loads(raw)


HUGE = "Ünïcode ✓ \\ tab\t 😀 word " * 50_000  # ~1.4 MB of JSON with escapes and non-ASCII, quote-free


def test_a_string_longer_than_a_piece_is_decoded_in_pieces_cut_before_spaces() -> None:
    raw = chat(HUGE)
    split = long_strings.cut(raw)
    assert split is not None and len(split[1]) == 1
    start, end = split[1][0]
    cuts = list(long_strings.pieces(raw, start, end))
    assert len(cuts) > 3 and cuts[0][0] == start and cuts[-1][1] == end  # control: really in pieces
    assert all(high - low <= long_strings.PIECE and raw[high:high + 1] == b" " for low, high in cuts[:-1])
    assert all(cuts[i][1] == cuts[i + 1][0] for i in range(len(cuts) - 1))  # nothing lost or repeated
    assert decode(raw, "chat")[0] == orjson.loads(raw)


def test_a_long_string_without_spaces_is_one_piece() -> None:
    raw = chat("x." * 1_000_000)  # not base64: a blob would be set aside
    split = long_strings.cut(raw)
    assert split is not None
    start, end = split[1][0]
    assert list(long_strings.pieces(raw, start, end)) == [(start, end)]
    assert decode(raw, "chat")[0] == orjson.loads(raw)


def test_an_escape_cut_at_a_piece_boundary_is_the_whole_parse_400() -> None:
    """A backslash before a space (invalid JSON) ends a piece with a bad escape: the whole parse answers."""
    raw = chat("ab" * 200_000 + "\\" + " cd" * 200_000).replace(b"\\\\ ", b"\\ ", 1)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)  # control: the body really is bad
    with pytest.raises(LocalReply) as error:
        decode(raw, "chat")
    assert (error.value.status, error.value.code) == (400, "invalid_json")
