"""Request bodies: read once (decompressed, bounded, timed), parsed as one JSON object, checked shallowly.

``read_body`` runs inside a tiny aiohttp app on a real loopback socket, so the bytes go through
aiohttp's own parser and decompression exactly as in the gateway.
"""
from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from gateway.errors import LocalReply
from gateway.request import MAX_DEPTH, WALK_BUDGET, parse_json, read_body, validate, walk_depth
from tests.support.servers import gateway_config, start_gateway

LIMIT = 1000


async def _echo_size(request: web.Request) -> web.Response:
    try:
        body = await read_body(request, LIMIT, timeout_s=float(request.query.get("timeout", "5")))
    except LocalReply as reply:
        return web.Response(status=reply.status, body=reply.body(), content_type="application/json")
    return web.json_response({"size": len(body), "head": body[:20].decode(errors="replace")})


@pytest_asyncio.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/body", _echo_size)
    async with TestServer(app, host="127.0.0.1") as srv:
        yield srv


async def post(srv: TestServer, data: bytes, headers: dict[str, str] | None = None,
               timeout_s: float = 5) -> tuple[int, dict[str, Any]]:
    async with ClientSession() as session, session.post(
            srv.make_url(f"/body?timeout={timeout_s}"), data=data, headers=headers or {}) as resp:
        return resp.status, await resp.json(content_type=None)


async def raw_exchange(srv: TestServer, pieces: list[bytes], gap_s: float) -> bytes:
    """Send ``pieces`` on one connection ``gap_s`` apart; the whole answer (the server closes or answers)."""
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(gap_s)  # the trickle itself is the subject: a client that sends slowly
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


# ---------------------------------------------------------------- read_body

async def test_reads_a_plain_body(server: TestServer) -> None:
    assert await post(server, b"x" * LIMIT) == (200, {"size": LIMIT, "head": "x" * 20})


async def test_refuses_a_declared_length_over_the_limit(server: TestServer) -> None:
    status, body = await post(server, b"x" * (LIMIT + 1))
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert str(LIMIT) in body["error"]["message"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_counts_decompressed_bytes(server: TestServer, encoding: str) -> None:
    """A small compressed body that inflates past the limit is refused; one that fits is read inflated."""
    pack = gzip.compress if encoding == "gzip" else zlib.compress
    bomb = pack(b"0" * 200_000)
    assert len(bomb) < LIMIT
    status, body = await post(server, bomb, {"content-encoding": encoding})
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert await post(server, pack(b'{"a": 1}'), {"content-encoding": encoding}) == (200, {"size": 8,
                                                                                         "head": '{"a": 1}'})


async def test_refuses_an_unknown_content_encoding(server: TestServer) -> None:
    status, body = await post(server, b"{}", {"content-encoding": "x-compress-9000"})
    assert status == 415 and body["error"]["code"] == "unsupported_content_encoding"


async def test_a_corrupt_compressed_body_is_a_400(server: TestServer) -> None:
    status, body = await post(server, b"this is not gzip at all", {"content-encoding": "gzip"})
    assert status == 400 and body["error"]["code"] == "invalid_encoding"


async def test_a_trickled_body_gets_408(server: TestServer) -> None:
    head = (b"POST /body?timeout=0.3 HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n"
            b"Content-Type: application/json\r\n\r\n")
    answer = await raw_exchange(server, [head, b"{", b'"a'], gap_s=0.2)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"408", answer
    assert orjson.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"


async def test_body_timeout_comes_from_the_config(mock_upstream: Any) -> None:
    """Without an explicit timeout, ``server.body_timeout_s`` of the running gateway applies."""
    gw = await start_gateway(gateway_config(mock_upstream.url, server={"body_timeout_s": 0.3}))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n"
                     b"Content-Type: application/json\r\n\r\n{")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 10)
        writer.close()
    finally:
        await gw.close()
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"408", answer
    assert b"request_timeout" in answer


# ---------------------------------------------------------------- parse_json

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


# ---------------------------------------------------------------- validate

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
VALID: list[tuple[str, dict[str, Any]]] = [
    ("chat", CHAT),
    # Value ranges are forwarded: the provider judges them and its own error passes through.
    (
        "chat",
        {
            **CHAT,
            "temperature": 3,
            "top_p": 1.5,
            "presence_penalty": -2.5,
            "frequency_penalty": 9,
            "n": 0,
            "top_logprobs": 21,
            "max_tokens": 0,
            "max_completion_tokens": 2**40,
        },
    ),
    (
        "chat",
        {
            **CHAT,
            "messages": [{"role": "assistant", "content": None, "tool_calls": []}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 2**31 - 1,
            "n": 128,
            "top_logprobs": 0,
            "temperature": 0,
            "top_p": 1,
            "presence_penalty": -2,
            "frequency_penalty": 2.0,
            "stop": ["a", "b"],
            "user": "u",
            "seed": 7,
        },
    ),
    (
        "chat",
        {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "stop": "x"},
    ),
    (
        "chat",
        {
            **CHAT,
            "tools": [
                {"type": "function", "function": {"name": "f"}},
                {"type": "web_search"},
                {"type": "function", "name": "g"},
            ],
        },
    ),
    ("completions", {"model": "m", "prompt": "p"}),
    ("completions", {"model": "m", "prompt": ["p", "q"]}),
    ("embeddings", {"model": "m", "input": "x"}),
    ("embeddings", {"model": "m", "input": ["x", "y"], "encoding_format": "base64", "dimensions": 8}),
    ("embeddings", {"model": "m", "input": [1, 2, 3]}),
    ("embeddings", {"model": "m", "input": [[1, 2], [3]]}),
    ("responses", {"model": "m", "input": "x", "instructions": "be brief"}),
    ("responses", {"model": "m", "previous_response_id": "resp_1"}),
    ("responses", {"model": "m", "input": [{"role": "user", "content": "x"}]}),
]


@pytest.mark.parametrize(("operation", "body"), VALID)
def test_accepts_valid_bodies(operation: str, body: dict[str, Any]) -> None:
    validate(operation, body)


INVALID: list[tuple[str, dict[str, Any], str | None, str]] = [
    # operation, body, param, code
    ("chat", {**CHAT, "base_url": "http://evil"}, "base_url", "forbidden_field"),
    ("chat", {**CHAT, "api_key": "k", "organization_id": "o"}, "api_key", "forbidden_field"),
    ("chat", {"messages": CHAT["messages"]}, "model", "missing_model"),
    ("chat", {**CHAT, "model": 5}, "model", "invalid_type"),
    ("chat", {**CHAT, "model": ""}, "model", "invalid_type"),
    ("chat", {**CHAT, "model": "m" * 257}, "model", "invalid_type"),
    ("chat", {**CHAT, "model": "gpt\n4o"}, "model", "invalid_value"),
    ("chat", {**CHAT, "stream": "yes"}, "stream", "invalid_type"),
    ("chat", {**CHAT, "stream_options": []}, "stream_options", "invalid_type"),
    ("chat", {**CHAT, "user": 1}, "user", "invalid_type"),
    ("chat", {**CHAT, "max_tokens": True}, "max_tokens", "invalid_type"),
    ("chat", {**CHAT, "max_tokens": 1.5}, "max_tokens", "invalid_type"),
    ("chat", {**CHAT, "temperature": "1"}, "temperature", "invalid_type"),
    ("chat", {**CHAT, "top_p": True}, "top_p", "invalid_type"),
    ("chat", {**CHAT, "stop": ["a", 1]}, "stop", "invalid_type"),
    ("chat", {**CHAT, "stop": 3}, "stop", "invalid_type"),
    ("chat", {**CHAT, "tools": {"type": "function"}}, "tools", "invalid_type"),
    ("chat", {**CHAT, "tools": [{"function": {"name": "f"}}]}, "tools[0]", "invalid_type"),
    (
        "chat",
        {**CHAT, "tools": [{"type": "function", "function": {"name": ""}}]},
        "tools[0].function.name",
        "invalid_value",
    ),
    ("chat", {"model": "m"}, "messages", "missing_required"),
    ("chat", {"model": "m", "messages": "hi"}, "messages", "invalid_type"),
    ("chat", {"model": "m", "messages": []}, "messages", "empty_array"),
    ("chat", {"model": "m", "messages": ["hi"]}, "messages[0]", "invalid_type"),
    (
        "chat",
        {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
        "messages[0].role",
        "invalid_value",
    ),
    ("chat", {"model": "m", "messages": [{"content": "x"}]}, "messages[0].role", "invalid_value"),
    (
        "chat",
        {"model": "m", "messages": [{"role": "user", "content": 3}]},
        "messages[0].content",
        "invalid_type",
    ),
    (
        "chat",
        {"model": "m", "messages": [{"role": "assistant", "content": "ok"}, {"role": "system"}]},
        "messages[1].content",
        "missing_required",
    ),
    ("completions", {"model": "m"}, "prompt", "missing_required"),
    ("completions", {"model": "m", "prompt": 3}, "prompt", "invalid_type"),
    ("embeddings", {"model": "m"}, "input", "missing_required"),
    ("embeddings", {"model": "m", "input": "x", "dimensions": "8"}, "dimensions", "invalid_type"),
    (
        "embeddings",
        {"model": "m", "input": "x", "encoding_format": "int8"},
        "encoding_format",
        "invalid_value",
    ),
    ("embeddings", {"model": "m", "input": []}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": 3}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": ["x", 1]}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": [1, True]}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": [[1], ["x"]]}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": [[1, True]]}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": [[1], 2]}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": [True]}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": [1.5]}, "input", "invalid_type"),
    ("responses", {"model": "m"}, "input", "missing_required"),
    ("responses", {"model": "m", "input": 3}, "input", "invalid_type"),
    ("responses", {"model": "m", "input": "x", "instructions": ["be brief"]}, "instructions", "invalid_type"),
]


@pytest.mark.parametrize(
    ("operation", "body", "param", "code"),
    INVALID,
    ids=[f"{op}-{code}-{param}-{i}" for i, (op, _, param, code) in enumerate(INVALID)],
)
def test_refuses_invalid_bodies(operation: str, body: dict[str, Any], param: str | None, code: str) -> None:
    with pytest.raises(LocalReply) as exc:
        validate(operation, body)
    assert (exc.value.status, exc.value.type, exc.value.param, exc.value.code) == (
        400,
        "invalid_request_error",
        param,
        code,
    )


def test_forbidden_fields_are_checked_before_anything_else() -> None:
    """Even a body with no model is refused for the steering field first (the name is reported, sorted)."""
    with pytest.raises(LocalReply) as exc:
        validate("chat", {"azure_endpoint": "x", "api_base": "y"})
    assert (exc.value.code, exc.value.param) == ("forbidden_field", "api_base")


@pytest.mark.parametrize("at", range(0, 12))
def test_steering_scans_in_slices_see_keys_across_slice_edges(monkeypatch: pytest.MonkeyPatch,
                                                               at: int) -> None:
    """Large bodies are scanned slice by slice; a repeated or escaped key across an edge is still seen."""
    import gateway.request as request

    monkeypatch.setattr(request, "SLICE_BYTES", 16)
    pad = "x" * at
    twice = f'{{"p":"{pad}","model":"a","model":"b"}}'.encode()
    with pytest.raises(LocalReply) as err:
        parse_json(twice)
    assert err.value.code == "duplicate_key"
    escaped = f'{{"p":"{pad}","model":"a","mod\\u0065l":"b"}}'.encode()
    with pytest.raises(LocalReply):
        parse_json(escaped)
    assert parse_json(f'{{"p":"{pad}","model":"a","mode":"b"}}'.encode())["model"] == "a"  # control
