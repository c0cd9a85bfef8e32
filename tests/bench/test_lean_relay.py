"""bench.lean_relay: each server half over each client half relays the mock's answers (real sockets)."""
from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from bench.lean_relay import RawClient, build_app, make_client, serve_raw
from bench.scenarios import SMALL, STREAM
from gateway.mock import MockServer
from tests.support.servers import free_port

HEADERS = {"content-type": "application/json"}


@dataclass
class Relay:
    url: str
    client: RawClient | None


# httptools is no dependency: its server is tested where it is installed
HTTPTOOLS = ["httptools/raw", "splice/-"] if importlib.util.find_spec("httptools") else []


@pytest_asyncio.fixture(params=["raw/raw", "raw/aiohttp", "aiohttp/raw", "aiohttp/aiohttp", *HTTPTOOLS])
async def relay(request: pytest.FixtureRequest, mock_upstream: MockServer) -> AsyncIterator[Relay]:
    server_kind, client_kind = request.param.split("/")
    port = free_port()
    if server_kind == "splice":
        from bench.lean_splice import serve_splice

        splice, _ = await serve_splice(mock_upstream.base_url, "127.0.0.1", port)
        try:
            yield Relay(f"http://127.0.0.1:{port}", None)
        finally:
            splice.close()
    elif server_kind in ("raw", "httptools"):
        client = make_client(client_kind, mock_upstream.base_url)
        parser = "httptools" if server_kind == "httptools" else "aiohttp"
        server = await serve_raw(client, "127.0.0.1", port, parser)
        try:
            yield Relay(f"http://127.0.0.1:{port}", client if isinstance(client, RawClient) else None)
        finally:
            server.close()
            await client.close()
    else:
        runner = web.AppRunner(build_app(lambda: make_client(client_kind, mock_upstream.base_url)),
                               handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield Relay(f"http://127.0.0.1:{port}", None)
        finally:
            await runner.cleanup()


async def test_a_non_stream_and_a_stream_request_pass_through(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.url + "/v1/chat/completions", data=SMALL.replace(b"NONCE", b"1"),
                                headers=HEADERS) as resp:
            assert resp.status == 200 and resp.headers["x-request-id"].startswith("req_")
            answer = await resp.json()
        assert answer["choices"][0]["message"]["content"]
        async with session.post(relay.url + "/v1/chat/completions", data=STREAM.replace(b"NONCE", b"2"),
                                headers={**HEADERS, "x-mock-tokens": "5"}) as resp:
            assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
            events = [line async for line in resp.content if line.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]\n"
        deltas = [json.loads(e[6:])["choices"][0]["delta"] for e in events[:-1] if b'"choices":[{' in e]
        assert sum(1 for d in deltas if d.get("content")) == 5


async def test_the_stream_is_relayed_chunk_by_chunk_not_buffered(relay: Relay) -> None:
    """The first token arrives while the upstream is still producing the rest (one token per 200 ms)."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        start = loop.time()
        async with session.post(relay.url + "/v1/chat/completions", data=STREAM.replace(b"NONCE", b"3"),
                                headers={**HEADERS, "x-mock-tokens": "5",
                                         "x-mock-fault": "tokens_per_s=5"}) as resp:
            first = await resp.content.readany()
            first_at = loop.time() - start
            rest = await resp.read()
            total = loop.time() - start
    assert b'"role":"assistant"' in first and rest.endswith(b"data: [DONE]\n\n")
    assert first_at < total - 0.5


async def raw_exchange(url: str, data: bytes, answers: int) -> list[bytes]:
    """Send raw bytes on one connection; read ``answers`` Content-Length framed answers."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    out = []
    try:
        for _ in range(answers):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            out.append(head + await reader.readexactly(length))
    finally:
        writer.close()
    return out


async def test_keep_alive_pipelining_and_a_chunked_request_body(relay: Relay) -> None:
    body = SMALL.replace(b"NONCE", b"4")
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    one = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    two = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    answers = await raw_exchange(relay.url, one + two + b"GET /_bare/health HTTP/1.1\r\nHost: x\r\n\r\n", 3)
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
    assert b'"chat.completion"' in answers[0] and b'"chat.completion"' in answers[1]
    assert answers[2].endswith(b"\r\n\r\nok")


async def test_a_client_that_goes_away_mid_stream_frees_the_upstream_connection(relay: Relay) -> None:
    host, port = relay.url.removeprefix("http://").split(":")
    body = STREAM.replace(b"NONCE", b"5")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"x-mock-tokens: 50\r\nx-mock-fault: tokens_per_s=10\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    await reader.readuntil(b"\n\n")
    writer.close()
    if relay.client is not None:  # the raw client: the aborted answer's connection is closed, not pooled
        for _ in range(100):
            if not relay.client.open:
                break
            await asyncio.sleep(0.05)
        assert not relay.client.open and not relay.client.idle
    # and the relay still serves
    answers = await raw_exchange(relay.url, b"GET /_bare/health HTTP/1.1\r\nHost: x\r\n\r\n", 1)
    assert answers[0].startswith(b"HTTP/1.1 200 ")


async def test_a_malformed_request_gets_a_400(relay: Relay) -> None:
    host, port = relay.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    head = await asyncio.wait_for(reader.read(200), 5)
    writer.close()
    assert head.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 "))  # aiohttp: 1.0 to what it cannot parse
