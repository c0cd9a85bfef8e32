"""gateway/request_json.py: one JSON object parsed and checked (depth, repeated steering keys), cheaply."""
from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import LocalReply
from gateway.request_json import MAX_DEPTH, WALK_BUDGET, parse_json, walk_depth


def _code(exc: pytest.ExceptionInfo[LocalReply]) -> tuple[int, str | None]:
    return exc.value.status, exc.value.code


@pytest.mark.parametrize(("raw", "code"), [
    (b"", "invalid_json"),
    (b"  \n\t", "invalid_json"),
    (b"{", "invalid_json"),
    (b"{'model': 'x'}", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'"a string"', "invalid_json"),
    (b"null", "invalid_json"),
])
def test_refuses_what_is_not_one_json_object(raw: bytes, code: str) -> None:
    with pytest.raises(LocalReply) as exc:
        parse_json(raw)
    assert _code(exc) == (400, code)


def test_parses_an_object() -> None:
    assert parse_json(b' {"model": "m", "n": 1} ') == {"model": "m", "n": 1}


def _nested(depth: int) -> bytes:
    """An object whose containers nest ``depth`` levels deep (the outer object is level 1)."""
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_depth_limit_is_exact() -> None:
    assert parse_json(_nested(MAX_DEPTH))["a"] is not None
    with pytest.raises(LocalReply) as exc:
        parse_json(_nested(MAX_DEPTH + 1))
    assert _code(exc) == (400, "json_too_deep")


def test_depth_beyond_the_parser_limit_is_also_too_deep() -> None:
    with pytest.raises(LocalReply) as exc:
        parse_json(_nested(5000))
    assert _code(exc) == (400, "json_too_deep")


def test_depth_is_judged_past_the_walk_budget_too() -> None:
    """A body wider than the walk's budget (a long token array) is judged by brackets, then the full walk."""
    wide = list(range(WALK_BUDGET + 10))
    deep = orjson.loads(_nested(MAX_DEPTH + 1))
    shallow = orjson.loads(_nested(MAX_DEPTH - 1))  # one level more under "b"
    # "input" last: the walk meets the wide array first, gives up, and the bracket count decides
    for body in ({"model": "m", "b": shallow, "input": wide}, {"model": "m", "b": deep, "input": wide}):
        assert walk_depth(body, MAX_DEPTH, WALK_BUDGET) is None
    assert parse_json(orjson.dumps({"model": "m", "b": shallow, "input": wide}))["input"] == wide
    with pytest.raises(LocalReply) as exc:
        parse_json(orjson.dumps({"model": "m", "b": deep, "input": wide}))
    assert _code(exc) == (400, "json_too_deep")


def test_the_walk_sees_depth_below_wide_containers() -> None:
    """Within the budget: containers beside scalars are still walked (a message list, then its parts)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": "x"}]}
                                      for _ in range(200)]
    body = {"model": "m", "messages": messages}
    assert parse_json(orjson.dumps(body))["messages"] == messages
    messages[150]["content"][0]["deep"] = orjson.loads(_nested(MAX_DEPTH - 4))  # 5 levels above it
    with pytest.raises(LocalReply) as exc:
        parse_json(orjson.dumps(body))
    assert _code(exc) == (400, "json_too_deep")


def test_brackets_inside_strings_are_not_depth() -> None:
    raw = orjson.dumps({"model": "m", "text": "[" * 500 + "{" * 500})
    assert parse_json(raw)["text"].startswith("[[")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "a", "model": "b"}',
        b'{"stream": false, "model": "a", "stream": true}',
        # escaped spellings: only an escape of an ASCII letter sends a body to the key scan
        rb'{"model": "a", "mod\u0065l": "b"}',
        rb'{"stream": false, "model": "a", "stre\u0061m": true}',
        rb'{"\u006d\u006F\u0064\u0065\u006c": "b", "model": "a"}',
    ],
)
def test_duplicate_steering_keys_are_refused(raw: bytes) -> None:
    with pytest.raises(LocalReply) as exc:
        parse_json(raw)
    assert _code(exc) == (400, "duplicate_key")


def test_text_escapes_do_not_trigger_the_key_scan() -> None:
    """Escapes of non-ASCII or control characters spell no key: the body passes; an escaped letter in a
    key that is not a steering key passes the key scan (the control: the scan runs and finds nothing)."""
    text = rb'{"model": "a", "messages": [{"content": "caf\u00e9 \n \"q\" \u2615"}]}'
    assert parse_json(text)["messages"][0]["content"] == "caf\u00e9 \n \"q\" \u2615"
    assert parse_json(rb'{"model": "a", "us\u0065r": "u1"}')["user"] == "u1"


def test_a_nested_stream_key_is_not_a_steering_key() -> None:
    """Without a top-level ``stream`` its count is skipped; with one, the exact check still judges only the
    top level: nested repeats are the provider's to judge."""
    assert parse_json(b'{"model": "a", "metadata": {"stream": 1, "stream": 2}}')["metadata"] == {"stream": 2}
    raw = b'{"model": "a", "stream": true, "metadata": {"stream": 1, "stream": 2}}'
    assert parse_json(raw)["stream"] is True
    with pytest.raises(LocalReply) as exc:  # the control: a top-level repeat
        parse_json(b'{"model": "a", "stream": true, "metadata": {"stream": 1}, "stream": false}')
    assert _code(exc) == (400, "duplicate_key")


def test_nested_repeats_pass_even_when_the_count_triggers() -> None:
    """The exact check judges the top-level object only: a nested object's repeated ``model`` (a tool's
    schema, metadata) is the provider's to judge, though the cheap count sends the body to the check."""
    assert parse_json(b'{"model": "a", "meta": {"model": 1, "model": 2}}')["meta"] == {"model": 2}
    assert parse_json(b'{"meta": {"model": 1, "user": 2, "user": 3}, "model": "a"}')["model"] == "a"
    with pytest.raises(LocalReply) as exc:  # the control: the same body with the repeat at the top level
        parse_json(b'{"model": "a", "meta": {"model": 1}, "model": "b"}')
    assert _code(exc) == (400, "duplicate_key")


def test_repeated_names_in_different_objects_are_fine() -> None:
    raw = b'{"model": "a", "messages": [{"model": "x", "stream": 1}, {"model": "y", "stream": 2}]}'
    assert parse_json(raw)["model"] == "a"


def test_other_duplicates_pass_the_cheap_guard() -> None:
    """The guard is for keys that steer routing and streaming; others are left to the provider (last wins)."""
    assert parse_json(b'{"model": "a", "user": "u1", "user": "u2"}')["user"] == "u2"


@pytest.mark.parametrize("at", range(0, 12))
def test_steering_scans_in_slices_see_keys_across_slice_edges(monkeypatch: pytest.MonkeyPatch,
                                                               at: int) -> None:
    """Large bodies are scanned slice by slice; a repeated or escaped key across an edge is still seen."""
    import gateway.request_json as request_json

    monkeypatch.setattr(request_json, "SLICE_BYTES", 16)
    pad = "x" * at
    twice = f'{{"p":"{pad}","model":"a","model":"b"}}'.encode()
    with pytest.raises(LocalReply) as err:
        parse_json(twice)
    assert err.value.code == "duplicate_key"
    escaped = f'{{"p":"{pad}","model":"a","mod\\u0065l":"b"}}'.encode()
    with pytest.raises(LocalReply):
        parse_json(escaped)
    assert parse_json(f'{{"p":"{pad}","model":"a","mode":"b"}}'.encode())["model"] == "a"  # control


def test_a_small_body_with_few_brackets_is_not_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nesting is at most the number of brackets: a small body with fewer than the limit needs no walk;
    one with more is still walked (and refused when it is too deep)."""
    import gateway.request_json as request_json

    walked: list[int] = []

    def counting(value: dict[str, Any], limit: int, budget: float = float("inf")) -> bool | None:
        walked.append(1)
        return walk_depth(value, limit, budget)

    monkeypatch.setattr(request_json, "walk_depth", counting)
    assert parse_json(b'{"model":"m","messages":[{"role":"user","content":"[{["}]}')["model"] == "m"
    assert walked == []
    with pytest.raises(LocalReply) as exc:
        parse_json(_nested(MAX_DEPTH + 1))
    assert _code(exc) == (400, "json_too_deep") and walked
