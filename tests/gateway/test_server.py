"""The server: malformed HTTP answered in the OpenAI error shape, and serve() draining cleanly on stop.

Everything runs on real loopback sockets: the gateway in process (``start_gateway`` uses the same
``make_runner`` as ``serve``), the fake provider from ``mock_upstream``, raw bytes where no HTTP client
would send them.
"""
from __future__ import annotations

import asyncio
import gc
import socket
import sys
from collections import deque
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp.http_parser import HttpRequestParser
from aiohttp.test_utils import make_mocked_request

from gateway.config import parse_config
from gateway.exchange import DisconnectGuard
from gateway.handler import EXCHANGE
from gateway.mock import MockServer
from gateway.server import _JsonErrorHandler, serve
from gateway.switching import SWITCH_INTERVAL_S
from tests.support.exchange import build_exchange
from tests.support.servers import InProcessGateway, bound_socket, gateway_config, start_gateway
from tests.support.until import until

MAX_HEADER = 2048
CHAT = [{"role": "user", "content": "drain me"}]


@pytest_asyncio.fixture
async def gw(mock_upstream: MockServer) -> AsyncIterator[InProcessGateway]:
    gateway = await start_gateway(gateway_config(mock_upstream.url, server={"max_header_bytes": MAX_HEADER}))
    try:
        yield gateway
    finally:
        await gateway.close()


async def send_raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data``, read until the server closes; the status, headers (lower-cased) and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_a_malformed_request_line_is_a_json_400(gw: InProcessGateway) -> None:
    status, headers, body = await send_raw(gw.port, b"GET /healthz HTTP/1.1 sk-leaked-secret\x01\r\n\r\n")
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    # (send_raw read to EOF: the server closed the connection after answering)
    error = orjson.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_http_request")
    assert error["message"].startswith("Malformed HTTP request")
    assert b"sk-leaked-secret" not in body  # the client's bytes are never echoed


async def test_an_oversized_header_is_refused_in_json_without_echo(gw: InProcessGateway) -> None:
    big = b"X-Big: sk-" + b"a" * (MAX_HEADER + 100) + b"\r\n"
    status, headers, body = await send_raw(gw.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + big + b"\r\n")
    assert status in (400, 431)  # aiohttp's choice; the shape below is ours
    assert headers["content-type"].startswith("application/json")
    assert orjson.loads(body)["error"]["code"] == "invalid_http_request"
    assert b"aaaaaaaa" not in body


async def test_a_header_within_the_limit_is_served(gw: InProcessGateway) -> None:
    fits = b"X-Big: " + b"a" * (MAX_HEADER // 2) + b"\r\n"
    status, _, body = await send_raw(gw.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                              + fits + b"\r\n")
    assert (status, orjson.loads(body)) == (200, {"status": "ok"})


async def test_unknown_paths_still_answer_in_json(gw: InProcessGateway) -> None:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/no/such/thing") as resp:
        assert resp.status == 404
        assert "error" in await resp.json()


# ---------------------------------------------------------------- serve() and drain

async def _open_stream(session: aiohttp.ClientSession, url: str, fault: str) -> aiohttp.ClientResponse:
    resp = await session.post(url + "/v1/chat/completions", headers={"x-mock-fault": fault},
                              json={"model": "gpt-4o", "messages": CHAT, "stream": True, "max_tokens": 10})
    assert resp.status == 200
    await resp.content.readline()  # the first event arrived: the stream is open
    return resp


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        return resp.status


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_serve_drains_open_streams_on_stop_and_returns_zero(mock_upstream: MockServer) -> None:
    """Stop: /readyz 503 at once, a short stream completes, one past drain_s ends with an error event,
    the port closes and serve() returns 0."""
    config = parse_config(gateway_config(mock_upstream.url, server={"drain_s": 2.0, "grace_s": 0.5}), {})
    sock = bound_socket()
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    stop = asyncio.Event()
    run = asyncio.create_task(serve(config, host="127.0.0.1", port=0, sock=sock, stop=stop))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async def ready() -> bool:
                try:
                    return await _status(session, url + "/readyz") == 200
                except aiohttp.ClientConnectionError:
                    return False

            await until(ready, timeout=30, message="serve() became ready")
            short = await _open_stream(session, url, "drip_ms=60")
            long = await _open_stream(session, url, "stall_after_chunks=2;stall_ms=60000")
            stop.set()
            # readiness flips at once, while new connections are still accepted (the grace period)
            async def draining() -> bool:
                return await _status(session, url + "/readyz") == 503

            await until(draining, timeout=0.4, message="/readyz 503 within the grace period")
            short_body = (await short.read()).decode()
            long_body = (await long.read()).decode()
        assert short_body.rstrip().endswith("data: [DONE]")
        assert "[DONE]" not in long_body
        assert '"code":"gateway_shutdown"' in long_body.replace(" ", "")
        assert await asyncio.wait_for(run, 10) == 0
        assert not _accepts(port)
    finally:
        stop.set()
        if not run.done():
            await asyncio.wait_for(run, 10)


async def test_serve_with_nothing_open_stops_promptly(mock_upstream: MockServer) -> None:
    """... and a serving process asks for the short GIL switch interval (gateway/switching.py)."""
    config = parse_config(gateway_config(mock_upstream.url, server={"drain_s": 5.0, "grace_s": 0}), {})
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop = asyncio.Event()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.005)  # CPython's default, whatever ran before
    run = asyncio.create_task(serve(config, host="127.0.0.1", port=0, sock=sock, stop=stop))
    try:
        async with aiohttp.ClientSession() as session:
            async def ready() -> bool:
                try:
                    return await _status(session, url + "/readyz") == 200
                except aiohttp.ClientConnectionError:
                    return False

            await until(ready, timeout=30, message="serve() became ready")
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
        loop = asyncio.get_running_loop()
        started = loop.time()
        stop.set()
        assert await asyncio.wait_for(run, 10) == 0
        assert loop.time() - started < 2.0  # no open request: no waiting for drain_s
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        if not run.done():
            await asyncio.wait_for(run, 10)


def _handlers(gw: InProcessGateway) -> list[_JsonErrorHandler]:
    server = gw.runner.server
    assert server is not None
    return [h for h in server.connections if isinstance(h, _JsonErrorHandler)]


async def test_a_served_request_leaves_no_head_timer(gw: InProcessGateway) -> None:
    """aiohttp resumes its parser with ``data_received(b"")`` while a handler reads the body: no bytes of a
    new head, so no head timer (one was left on every open stream, and could 408 an idle keep-alive
    connection header_timeout_s after its last request)."""
    body = orjson.dumps({"model": "gpt-4o", "messages": CHAT})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
    _, unfinished = await asyncio.open_connection("127.0.0.1", gw.port)
    unfinished.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # control: a head still coming
    await until(lambda: any(h._head_timer is not None for h in _handlers(gw)), timeout=5.0)
    served = [h for h in _handlers(gw) if h._request_count == 1]
    assert len(served) == 1 and served[0]._head_timer is None
    for w in (writer, unfinished):
        w.close()


async def test_a_head_that_arrives_whole_arms_no_timer(gw: InProcessGateway,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: a request head complete in one read needs no head timer (one was made and cancelled per
    request, before its handler ran); a head arriving in pieces is timed from its first piece."""
    armed: list[_JsonErrorHandler] = []
    arm = _JsonErrorHandler._arm_head_timer

    def counting(self: _JsonErrorHandler) -> None:
        armed.append(self)
        arm(self)

    monkeypatch.setattr(_JsonErrorHandler, "_arm_head_timer", counting)
    body = orjson.dumps({"model": "gpt-4o", "messages": CHAT})
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    whole = head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(whole)
    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
    assert len(armed) == 1  # connection_made's only (a connection that sends nothing is timed too)
    _, pieces = await asyncio.open_connection("127.0.0.1", gw.port)
    pieces.write(head)  # the control: the rest of this head is still to come
    await until(lambda: len(armed) == 3, timeout=5.0, message="a partial head is timed")
    for w in (writer, pieces):
        w.close()


def _parser_pairs(handler: _JsonErrorHandler) -> int:
    """Header pairs in the lists of the connection's request parser (aiohttp's private C attributes)."""
    parser = handler._parser
    return sum(len(ref) for ref in gc.get_referents(parser) if type(ref) is list)


@pytest.mark.skipif(HttpRequestParser.__module__ != "aiohttp._http_parser", reason="the C parser keeps them")
async def test_an_open_stream_leaves_no_copy_of_its_head_in_the_parser(gw: InProcessGateway) -> None:
    """Issue 21: the C parser keeps a head's pairs until the connection's next request, and the message its
    raw pairs (bytes) beside the decoded headers; an open stream keeps the decoded headers only. Control:
    a head being parsed is in the parser's lists."""
    body = orjson.dumps({"model": "gpt-4o", "messages": CHAT, "stream": True})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"X-Mock-Fault: stall_after_chunks=2;stall_ms=2000\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
    _, unfinished = await asyncio.open_connection("127.0.0.1", gw.port)
    unfinished.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-B: 2\r\n")
    await until(lambda: any(_parser_pairs(h) >= 2 for h in _handlers(gw)), timeout=5.0,
                message="the control: a head still coming is in the parser's lists")
    served = [h for h in _handlers(gw) if h._request_count == 1]
    assert len(served) == 1 and _parser_pairs(served[0]) == 0
    request = served[0]._current_request  # the open stream's: its headers once, not also as raw bytes
    assert request is not None and request.raw_headers == ()
    assert request.headers["x-mock-fault"].startswith("stall") and len(request.headers) == 4
    for w in (writer, unfinished):
        w.close()


async def test_pipelined_requests_are_queued_in_a_small_list(gw: InProcessGateway) -> None:
    """Issue 21: a connection's queue of parsed requests is a list (56 bytes empty), not aiohttp's deque
    (~760: the control); requests a client pipelines are still answered one by one, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answers = (await asyncio.wait_for(reader.read(), 10)).split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"404", b"200"]
    writer.close()
    _, idle = await asyncio.open_connection("127.0.0.1", gw.port)
    idle.write(b"GET /healthz HTTP/1.1\r\n")
    await until(lambda: any(h._head_timer is not None for h in _handlers(gw)), timeout=5.0)
    queues = [h._messages for h in _handlers(gw)]
    assert queues and all(sys.getsizeof(q) < 100 < 600 < sys.getsizeof(deque()) for q in queues)
    idle.close()


@pytest.mark.parametrize("holding", [True, False])
async def test_a_disconnect_while_a_guard_holds_cancels_the_handler_only_on_release(holding: bool) -> None:
    """A coalescing leader's call others wait for (``Exchange.guard`` holding): the client's disconnect
    leaves the handler to its guard, which cancels it on release; control: a guard that does not hold leaves
    the cancel to aiohttp (at once)."""
    handler = object.__new__(_JsonErrorHandler)
    task = asyncio.create_task(asyncio.sleep(10))
    request = make_mocked_request("POST", "/v1/chat/completions")
    ex = build_exchange()
    ex.guard = DisconnectGuard(lambda: holding)
    request[EXCHANGE] = ex
    handler._task_handler, handler._current_request = task, request
    handler._defer_cancel()
    if not holding:
        assert handler._task_handler is task  # aiohttp's connection_lost cancels it
        task.cancel()
        return
    assert handler._task_handler is None
    await asyncio.sleep(0)
    assert not task.done()
    ex.guard.release()
    await until(task.done)
    assert task.cancelled()
