"""gateway/request.py: request bodies read once (decompressed, bounded, timed).

``read_body`` runs inside a tiny aiohttp app on a real loopback socket, so the bytes go through
aiohttp's own parser and decompression exactly as in the gateway.
"""
from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import ClientSession, web
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.test_utils import TestServer

from gateway.errors import LocalReply
from gateway.received import ReceiveBudget, Received
from gateway.request import body_if_whole, read_body, read_large, read_pieces
from gateway.telemetry.metrics import Metrics
from gateway.tokens.pool import WorkPool
from tests.support.servers import gateway_config, start_gateway

LIMIT = 1000


async def _echo_size(request: web.Request) -> web.Response:
    try:
        body = await read_body(request, LIMIT, timeout_s=float(request.query.get("timeout", "5")))
    except LocalReply as reply:
        return web.Response(status=reply.status, body=reply.body(), content_type="application/json")
    return web.json_response({"size": len(body), "head": body[:20].decode(errors="replace")})


async def _whole_or_read(request: web.Request) -> web.Response:
    """``body_if_whole`` first, as the handler does; then ``read_body`` for a body still arriving."""
    try:
        whole = body_if_whole(request, LIMIT)
        body = whole if whole is not None else await read_body(request, LIMIT, timeout_s=5)
    except LocalReply as reply:
        return web.Response(status=reply.status, body=reply.body(), content_type="application/json")
    return web.json_response({"size": len(body), "whole": whole is not None})


async def _buffer_kept(request: web.Request) -> web.Response:
    """The body reader's buffer type before and after the body was read (and what reading again gives)."""
    before = type(request.content._buffer).__name__
    whole = body_if_whole(request, LIMIT)
    body = whole if whole is not None else await read_body(request, LIMIT, timeout_s=5)
    again = await request.content.read() + request.content.read_nowait()
    return web.json_response({"before": before, "after": type(request.content._buffer).__name__,
                              "size": len(body), "again": len(again), "whole": whole is not None})


@pytest_asyncio.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/body", _echo_size)
    app.router.add_post("/whole", _whole_or_read)
    app.router.add_post("/buffer", _buffer_kept)
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


async def test_a_body_in_pieces_is_read_whole(server: TestServer) -> None:
    """A body still arriving when the read starts is read piece by piece (a body already whole is taken in
    one piece); both give the same bytes."""
    head = (b"POST /body?timeout=5 HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n\r\n")
    answer = await raw_exchange(server, [head, b'{"a":', b' "bcd"}'], gap_s=0.01)
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"200", answer
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"size": 12, "head": '{"a": "bcd"}'}


async def test_a_chunked_body_in_pieces_is_read_whole(server: TestServer) -> None:
    """Transfer-Encoding: chunked, its chunks split across writes: the pieces read one at a time (no
    join per step) give the body's bytes in order."""
    head = (b"POST /body?timeout=5 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\nContent-Type: application/json\r\n\r\n")
    chunks = b"a\r\naaaaaaaaaa\r\n" + b"a\r\nbbbbbbbbbb\r\n" + b"a\r\ncccccccccc\r\n0\r\n\r\n"
    answer = await raw_exchange(server, [head, chunks[:20], chunks[20:41], chunks[41:]], gap_s=0.01)
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"200", answer
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"size": 30, "head": "a" * 10 + "b" * 10}


async def test_a_whole_body_is_taken_without_reading_and_refused_alike(server: TestServer) -> None:
    """A body already whole is taken at once; one still arriving is left to ``read_body``; the refusals
    (unknown encoding, declared or inflated size over the limit) are those of ``read_body``."""
    async with ClientSession() as session:
        async with session.post(server.make_url("/whole"), data=b"x" * 100) as resp:
            assert await resp.json() == {"size": 100, "whole": True}
        async with session.post(server.make_url("/whole"), data=b"{}",
                                headers={"content-encoding": "x-compress-9000"}) as resp:
            assert resp.status == 415
        async with session.post(server.make_url("/whole"), data=b"x" * (LIMIT + 1)) as resp:
            assert resp.status == 413
        async with session.post(server.make_url("/whole"), data=gzip.compress(b"0" * 200_000),
                                headers={"content-encoding": "gzip"}) as resp:
            assert resp.status == 413
    head = (b"POST /whole HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n\r\n")
    answer = await raw_exchange(server, [head, b'{"a":', b' "bcd"}'], gap_s=0.01)
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"size": 12, "whole": False}


async def test_a_body_read_to_its_end_lets_its_readers_deque_go(server: TestServer) -> None:
    """Issue 21: once the body is read (whole, or in pieces), its reader's buffer is an empty SmallQueue
    (56 bytes) instead of aiohttp's deque (~760, the control before reading); reading again gives nothing."""
    expected = {"before": "deque", "after": "SmallQueue", "size": 100, "again": 0}
    async with ClientSession() as session, session.post(server.make_url("/buffer"), data=b"x" * 100) as resp:
        assert await resp.json() == {**expected, "whole": True}
    head = (b"POST /buffer HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\nConnection: close\r\n\r\n")
    answer = await raw_exchange(server, [head, b"x" * 50, b"x" * 50], gap_s=0.01)
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1]) == {**expected, "whole": False}


async def test_a_request_without_a_body_reads_empty_every_time(server: TestServer) -> None:
    """aiohttp's empty payload is one object per process: its end-of-body marker is given out once, then
    ``iter_chunks`` over it never ends (the test suite hung here). Read twice after it was spent."""
    await EMPTY_PAYLOAD.readchunk()  # spent, whatever read it before in this process
    for _ in range(2):
        async with ClientSession() as session, session.post(server.make_url("/body")) as resp:
            assert await asyncio.wait_for(resp.json(), 5) == {"size": 0, "head": ""}


async def test_a_large_body_is_read_in_its_pieces() -> None:
    """A body declared >= 256 KiB is not taken by ``body_if_whole`` (its join would run on the loop):
    ``read_pieces`` gives it as received, unjoined; ``read_body`` joins them (the same bytes)."""
    big = bytes(range(256)) * 2048  # 512 KiB

    async def pieces(request: web.Request) -> web.Response:
        assert body_if_whole(request, 1 << 24) is None
        got = await read_pieces(request, 1 << 24, timeout_s=5)
        return web.json_response({"pieces": len(got), "same": b"".join(got) == big})

    app = web.Application()
    app.router.add_post("/pieces", pieces)
    async with TestServer(app, host="127.0.0.1") as srv, ClientSession() as session:
        async with session.post(srv.make_url("/pieces"), data=big) as resp:
            answer = await resp.json()
    assert answer["same"] is True and answer["pieces"] >= 1


async def test_a_large_body_is_joined_in_the_work_pool() -> None:
    """With a pool (the passthrough, tools and MCP routes), a large body's pieces are joined there
    (``gateway_work_total{kind="join"}``); a small one on the loop, where it costs nothing."""
    big = bytes(range(256)) * 2048  # 512 KiB, sent in 32 KiB chunks: many pieces
    metrics = Metrics()
    pool = WorkPool(threads=1, metrics=metrics)

    async def joined(request: web.Request) -> web.Response:
        body = await read_body(request, 1 << 24, timeout_s=5, work=pool, tenant="t")
        return web.json_response({"size": len(body), "same": body in (big, b"small")})

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 32768):
            yield big[i:i + 32768]

    def joins() -> float | None:
        return metrics.registry.get_sample_value("gateway_work_total", {"kind": "join", "outcome": "done"})

    app = web.Application()
    app.router.add_post("/joined", joined)
    try:
        async with TestServer(app, host="127.0.0.1") as srv, ClientSession() as session:
            async with session.post(srv.make_url("/joined"), data=b"small") as resp:
                assert await resp.json() == {"size": 5, "same": True}
            assert joins() is None  # a small body: joined on the loop
            async with session.post(srv.make_url("/joined"), data=chunks()) as resp:
                assert await resp.json() == {"size": len(big), "same": True}
            assert joins() == 1
    finally:
        pool.close()


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


async def test_a_large_declared_body_is_received_into_a_prefaulted_buffer() -> None:
    """``read_large``: a body with a declared length goes into a ``Received`` buffer prefaulted in the
    pool (the same bytes); with the tenant's queue full it still does, unprefaulted; a chunked or a
    compressed body (no length to size it by) comes back in its pieces."""
    big = bytes(range(256)) * 2048  # 512 KiB
    metrics = Metrics()
    pool = WorkPool(threads=1, metrics=metrics)

    async def large(request: web.Request) -> web.Response:
        got = await read_large(request, 1 << 24, pool, "t", timeout_s=5)
        kind = type(got).__name__
        body = got.take() if isinstance(got, Received) else b"".join(got)
        return web.json_response({"kind": kind, "same": body == big})

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 32768):
            yield big[i:i + 32768]

    def prefaults(outcome: str) -> float | None:
        return metrics.registry.get_sample_value("gateway_work_total",
                                                 {"kind": "prefault", "outcome": outcome})

    app = web.Application(client_max_size=1 << 24)
    app.router.add_post("/large", large)
    try:
        async with TestServer(app, host="127.0.0.1") as srv, ClientSession() as session:
            send = partial(_post_json, session, srv.make_url("/large"))
            assert await send(big) == {"kind": "Received", "same": True}
            assert prefaults("done") == 1
            assert await send(chunks()) == {"kind": "list", "same": True}  # chunked: no declared length
            gz = {"content-encoding": "gzip"}
            assert await send(gzip.compress(big), gz) == {"kind": "list", "same": True}
            pool.max_queued = 0
            assert await send(big) == {"kind": "Received", "same": True}  # busy: not prefaulted, same bytes
            assert prefaults("queue_full") == 1 and prefaults("done") == 1
    finally:
        pool.close()


async def test_prefaulted_bodies_being_received_stay_within_the_budget() -> None:
    """A client trickling bodies that declare the maximum size must not make that size resident for a few
    bytes sent: past ``budget`` a large body is received in pieces (counted); the budget is given back when
    a body is read, and when its read fails. Control: within the budget, the body is prefaulted."""
    big = bytes(range(256)) * 2048  # 512 KiB
    metrics = Metrics()
    pool = WorkPool(threads=1, metrics=metrics)
    budget = ReceiveBudget(limit=len(big) + 1000)

    async def large(request: web.Request) -> web.Response:
        try:
            got = await read_large(request, 1 << 24, pool, "t", timeout_s=0.5, budget=budget, metrics=metrics)
        except LocalReply as reply:
            return web.json_response({"status": reply.status})
        body = got.take() if isinstance(got, Received) else b"".join(got)
        return web.json_response({"kind": type(got).__name__, "same": body == big})

    def refused() -> float | None:
        return metrics.registry.get_sample_value("gateway_policy_decisions_total",
                                                 {"policy": "receive", "decision": "prefault_over_budget"})

    app = web.Application(client_max_size=1 << 24)
    app.router.add_post("/large", large)
    try:
        async with TestServer(app, host="127.0.0.1") as srv, ClientSession() as session:
            send = partial(_post_json, session, srv.make_url("/large"))
            assert await send(big) == {"kind": "Received", "same": True}  # control: within the budget
            assert budget.held == 0 and refused() is None
            assert budget.take(2000)  # another body still arriving
            assert await send(big) == {"kind": "list", "same": True}  # over: in pieces, the same bytes
            assert refused() == 1.0 and budget.held == 2000
            budget.give(2000)
            reader, writer = await asyncio.open_connection(srv.host, srv.port)
            writer.write(b"POST /large HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nabc" % len(big))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # the body never comes: 408
            assert head.startswith(b"HTTP/1.1 200") and b"408" in await reader.read(100)
            assert budget.held == 0  # given back when the read failed
            writer.close()
    finally:
        pool.close()


async def _post_json(session: ClientSession, url: Any, data: Any,
                     headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with session.post(url, data=data, headers=headers or {}) as resp:
        answer: dict[str, Any] = await resp.json()
        return answer
