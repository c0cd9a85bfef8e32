"""Bad input gets a clean OpenAI-style 4xx, reaches no upstream, and the server keeps serving."""
from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest

from gateway.mock import MockServer
from tests.support.servers import InProcessGateway

CHAT = "/v1/chat/completions"
OK_MSG = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes | None
    status: int
    type: str = "invalid_request_error"
    code: str | None = None
    path: str = CHAT
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)


def j(text: str) -> bytes:
    return text.encode()


def deep(n: int) -> bytes:
    return b'{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"x":' + b"[" * n + b"]" * n + b"}"


CASES = [
    Case("empty body", b"", 400, code="invalid_json"),
    Case("whitespace body", b"   \n", 400, code="invalid_json"),
    Case("malformed json", j('{"model": "gpt-4o", "messages": ['), 400, code="invalid_json"),
    Case("trailing garbage", j('{"model":"gpt-4o","messages":[]} xx'), 400, code="invalid_json"),
    Case("json array", j("[1,2,3]"), 400, code="invalid_json"),
    Case("json string", j('"hello"'), 400, code="invalid_json"),
    Case(
        "invalid utf-8",
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"\xff\xfe"}]}',
        400,
        code="invalid_json",
    ),
    Case("NaN literal", j('{"model":"gpt-4o","messages":[],"temperature":NaN}'), 400, code="invalid_json"),
    Case("missing model", j('{"messages":[{"role":"user","content":"hi"}]}'), 400, code="missing_model"),
    Case(
        "model not a string",
        j('{"model":5,"messages":[{"role":"user","content":"hi"}]}'),
        400,
        code="invalid_type",
    ),
    Case(
        "empty model", j('{"model":"","messages":[{"role":"user","content":"hi"}]}'), 400, code="invalid_type"
    ),
    Case("missing messages", j('{"model":"gpt-4o"}'), 400, code="missing_required"),
    Case("messages not a list", j('{"model":"gpt-4o","messages":"hi"}'), 400, code="invalid_type"),
    Case("empty messages", j('{"model":"gpt-4o","messages":[]}'), 400, code="empty_array"),
    Case("message not an object", j('{"model":"gpt-4o","messages":["hi"]}'), 400, code="invalid_type"),
    Case(
        "bad role",
        j('{"model":"gpt-4o","messages":[{"role":"wizard","content":"hi"}]}'),
        400,
        code="invalid_value",
    ),
    Case(
        "content a number",
        j('{"model":"gpt-4o","messages":[{"role":"user","content":5}]}'),
        400,
        code="invalid_type",
    ),
    Case(
        "user content missing",
        j('{"model":"gpt-4o","messages":[{"role":"user"}]}'),
        400,
        code="missing_required",
    ),
    Case(
        "stream not bool",
        j('{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":"yes"}'),
        400,
        code="invalid_type",
    ),
    Case(
        "max_tokens string",
        j('{"model":"gpt-4o","messages":[{"role":"user","content":"h"}],"max_tokens":"9"}'),
        400,
        code="invalid_type",
    ),
    Case(
        "top_p string",
        j('{"model":"gpt-4o","messages":[{"role":"user","content":"h"}],"top_p":"a"}'),
        400,
        code="invalid_type",
    ),
    Case(
        "tools not a list",
        j('{"model":"gpt-4o","messages":[{"role":"user","content":"h"}],"tools":{}}'),
        400,
        code="invalid_type",
    ),
    Case(
        "tool without name",
        j(
            '{"model":"gpt-4o","messages":[{"role":"user","content":"h"}],'
            '"tools":[{"type":"function","function":{}}]}'
        ),
        400,
        code="invalid_value",
    ),
    Case(
        "stop wrong type",
        j('{"model":"gpt-4o","messages":[{"role":"user","content":"h"}],"stop":[1]}'),
        400,
        code="invalid_type",
    ),
    Case(
        "stream_options not object",
        j('{"model":"gpt-4o","messages":[{"role":"user","content":"h"}],"stream_options":true}'),
        400,
        code="invalid_type",
    ),
    Case(
        "forbidden api_base",
        j('{"model":"gpt-4o","messages":[{"role":"user","content":"h"}],"api_base":"http://evil"}'),
        400,
        code="forbidden_field",
    ),
    Case(
        "forbidden base_url",
        j('{"model":"gpt-4o","messages":[{"role":"user","content":"h"}],"base_url":"http://evil"}'),
        400,
        code="forbidden_field",
    ),
    Case("nested 65 deep", deep(65), 400, code="json_too_deep"),
    Case("nested 10000 deep", deep(10000), 400, code="json_too_deep"),
    Case(
        "too large",
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"' + b"x" * 70000 + b'"}]}',
        413,
        code="request_too_large",
    ),
    Case(
        "gzip bomb",
        gzip.compress(b'{"model":"gpt-4o","x":"' + b"0" * 5_000_000 + b'"}'),
        413,
        code="request_too_large",
        headers={"Content-Encoding": "gzip"},
    ),
    Case(
        "valid gzip is accepted",
        gzip.compress(b'{"model":"gpt-4o","messages":[{"role":"user","content":5}]}'),
        400,
        code="invalid_type",
        headers={"Content-Encoding": "gzip"},
    ),
    Case(
        "unknown encoding",
        j('{"model":"gpt-4o"}'),
        415,
        code="unsupported_content_encoding",
        headers={"Content-Encoding": "zstd-9000"},
    ),
    Case(
        "embeddings without input",
        j('{"model":"text-embedding-3-small"}'),
        400,
        code="missing_required",
        path="/v1/embeddings",
    ),
    Case(
        "embeddings mixed input",
        j('{"model":"text-embedding-3-small","input":["a",1]}'),
        400,
        code="invalid_type",
        path="/v1/embeddings",
    ),
    Case(
        "embeddings bad format",
        j('{"model":"text-embedding-3-small","input":"a","encoding_format":"hex"}'),
        400,
        code="invalid_value",
        path="/v1/embeddings",
    ),
    Case(
        "completions without prompt",
        j('{"model":"gpt-3.5-turbo-instruct"}'),
        400,
        code="missing_required",
        path="/v1/completions",
    ),
    Case(
        "responses input wrong type",
        j('{"model":"gpt-4o","input":5}'),
        400,
        code="invalid_type",
        path="/v1/responses",
    ),
    Case("unknown path", j("{}"), 404, code="unknown_url", path="/v1/does-not-exist"),
    Case("root path", None, 404, code="unknown_url", path="/", method="GET"),
    Case("GET on chat", None, 405, code="method_not_allowed", method="GET"),
    Case("PUT on embeddings", j("{}"), 405, code="method_not_allowed", method="PUT", path="/v1/embeddings"),
    Case("POST on models", j("{}"), 405, code="method_not_allowed", path="/v1/models"),
    Case("unknown model id", None, 404, code="model_not_found", method="GET", path="/v1/models/nope-model"),
]


@pytest.fixture
async def small_gateway(make_gateway) -> InProcessGateway:  # type: ignore[no-untyped-def]
    return await make_gateway(
        server={"max_body_bytes": 65536, "drain_s": 5, "grace_s": 0},
        routes=[
            {"match": {"model": "gpt-*"}, "upstream": "mock"},
            {"match": {"model": "text-embedding-*"}, "upstream": "mock"},
        ],
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_bad_input_gets_clean_4xx(
    small_gateway: InProcessGateway, mock_upstream: MockServer, case: Case
) -> None:
    """Each bad request: exact status, OpenAI error shape and type; nothing reaches the provider."""
    async with aiohttp.ClientSession() as session:
        async with session.request(
            case.method,
            small_gateway.url + case.path,
            data=case.body,
            headers={"Content-Type": "application/json", **case.headers},
        ) as resp:
            assert resp.status == case.status
            body = await resp.json(content_type=None)
        error = body["error"]
        assert set(error) >= {"message", "type", "code", "param"}
        assert error["type"] == case.type and error["code"] == case.code
        assert resp.headers.get("x-request-id")
        assert [a.path for a in mock_upstream.recorder.attempts if not a.path.endswith("/models")] == []
        async with session.post(small_gateway.url + CHAT, json={"model": "gpt-4o", "messages": OK_MSG}) as ok:
            assert ok.status == 200  # still serving


async def test_unknown_model_is_404_model_not_found(small_gateway: InProcessGateway) -> None:
    """A model no route matches gets 404 model_not_found, in the error shape."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            small_gateway.url + CHAT, json={"model": "llama-zz", "messages": OK_MSG}
        ) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "model_not_found"


async def test_wrong_key_in_keys_mode_is_401(make_gateway) -> None:  # type: ignore[no-untyped-def]
    """auth.mode keys: missing or wrong bearer key gets 401 invalid_api_key."""
    gw = await make_gateway(auth={"mode": "keys", "keys": [{"key": "team-a-key", "tenant": "a"}]})
    async with aiohttp.ClientSession() as session:
        for headers, code in (
            ({}, "missing_api_key"),
            ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
        ):
            async with session.post(
                gw.url + CHAT, json={"model": "gpt-4o", "messages": OK_MSG}, headers=headers
            ) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == code
        async with session.post(
            gw.url + CHAT,
            json={"model": "gpt-4o", "messages": OK_MSG},
            headers={"Authorization": "Bearer team-a-key"},
        ) as resp:
            assert resp.status == 200


async def test_undecodable_gzip_body_is_400(small_gateway: InProcessGateway) -> None:
    """A body that claims gzip but is not: 400 invalid_encoding, then the connection closes (raw socket)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", small_gateway.port)
    body = b"definitely not gzip"
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert orjson.loads(payload)["error"]["code"] == "invalid_encoding"
