"""``LeanResponse`` behind aiohttp's real server, read on a raw socket: framing, keep-alive as aiohttp
decides it, HEAD and body-less statuses, header injection, back-pressure, a client that left, and what
aiohttp's access log still reads."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.response_writer import LeanResponse, header_block, status_line
from tests.support.until import until

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOGGED: web.AppKey[list[tuple[int, int]]] = web.AppKey("logged", list)


class _Log(AbstractAccessLogger):
    """aiohttp's access log hook: what it reads of each finished response."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        request.app[LOGGED].append((response.status, response.body_length))


class Server:
    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.app = web.Application()
        self.app[LOGGED] = []
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self.port = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self.handler is not None
        return await self.handler(request)

    @property
    def logged(self) -> list[tuple[int, int]]:
        return self.app[LOGGED]


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    runner = web.AppRunner(srv.app, access_log_class=_Log, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield srv
    finally:
        await runner.cleanup()


async def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw``; everything the server sends until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await reader.read()
    writer.close()
    return data


def req(method: str = "GET", version: str = "1.1", extra: str = "") -> bytes:
    return f"{method} /x HTTP/{version}\r\nHost: t\r\n{extra}\r\n".encode()


CLOSE = "Connection: close\r\n"


def whole(status: int = 200, body: bytes = b'{"a":1}') -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return LeanResponse(status, {"content-type": "application/json", "x-request-id": "r"}, body=body)
    return handler


def streamed(*chunks: bytes) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = LeanResponse(200, {"content-type": "text/event-stream"}, request=request)
        for chunk in chunks:
            if resp.put(chunk):
                await resp.drain()
        resp.end()
        return resp
    return handler


async def test_a_whole_answer_is_one_head_with_its_length_and_the_connection_is_kept(server: Server) -> None:
    server.handler = whole()
    data = await exchange(server.port, req() + req(extra=CLOSE))  # two requests on one connection
    first, second = data.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert b"content-length: 7\r\n" in first.lower() and first.endswith(b'\r\n\r\n{"a":1}')
    assert b"connection" not in first.lower()  # HTTP/1.1 keeps the connection by default
    assert b"Connection: close\r\n" in second  # the control: a client's close is answered as aiohttp does
    assert b"Date: " in first and b"Server: " in first and b"x-request-id: r\r\n" in first
    assert server.logged[0][0] == 200 and server.logged[0][1] == len(data) // 2 - 9  # the head counted


async def test_a_stream_is_chunked_and_ends_with_the_end_marker(server: Server) -> None:
    server.handler = streamed(b"data: 1\n\n", b"", b"data: 2\n\n")
    data = await exchange(server.port, req(extra=CLOSE))
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding: chunked" in head and b"content-length" not in head.lower()
    assert body == b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"  # an empty chunk is not an end
    assert server.logged == [(200, len(data))]


async def test_an_http_1_0_stream_ends_with_the_connection_and_a_whole_answer_keeps_it_on_request(
        server: Server) -> None:
    server.handler = streamed(b"data: 1\n\n")
    data = await exchange(server.port, req(version="1.0", extra="Connection: keep-alive\r\n"))
    assert data.startswith(b"HTTP/1.0 200 OK\r\n") and data.endswith(b"\r\n\r\ndata: 1\n\n")  # no framing
    assert b"chunked" not in data and b"Connection" not in data  # closed: HTTP/1.0's default
    server.handler = whole()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(req(version="1.0", extra="Connection: keep-alive\r\n"))
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Connection: keep-alive\r\n" in head and await reader.readexactly(7) == b'{"a":1}'
    writer.write(req(version="1.0"))  # the same connection serves a second request
    assert (await reader.read()).endswith(b'{"a":1}')
    writer.close()


@pytest.mark.parametrize(("method", "status", "length"), [("HEAD", 200, b"7"), ("GET", 204, None),
                                                           ("GET", 304, None), ("GET", 200, b"7")])
async def test_head_and_body_less_statuses_send_no_body(server: Server, method: str, status: int,
                                                        length: bytes | None) -> None:
    """HEAD keeps the length of the body it does not get; 204 and 304 have neither (aiohttp's rules);
    GET 200 is the control."""
    server.handler = whole(status)
    data = await exchange(server.port, req(method, extra=CLOSE))
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(status_line((1, 1), status).rstrip())
    assert (b"Content-Length: " + length in head) if length else b"Content-Length" not in head
    assert body == (b'{"a":1}' if method == "GET" and status == 200 else b"")


async def test_a_head_request_to_a_stream_gets_its_head_only(server: Server) -> None:
    server.handler = streamed(b"data: 1\n\n")
    data = await exchange(server.port, req("HEAD", extra=CLOSE))
    assert data.endswith(b"\r\n\r\n") and b"data:" not in data and b"chunked" not in data


def test_header_injection_is_refused_and_plain_values_pass() -> None:
    assert header_block({"a": "1", "b": "x y"}) == "\r\na: 1\r\nb: x y"
    for bad in ("1\r\nset-cookie: x", "1\n", "1\r", "a\x00b"):
        with pytest.raises(ValueError):
            header_block({"a": "ok", "b": bad})


def test_status_lines_are_built_for_any_status_and_version() -> None:
    assert status_line((1, 1), 429) == b"HTTP/1.1 429 Too Many Requests\r\n"
    assert status_line((1, 0), 200) == b"HTTP/1.0 200 OK\r\n"
    assert status_line((1, 1), 599) == b"HTTP/1.1 599 \r\n"  # aiohttp's empty reason


async def test_a_stream_waits_for_a_client_that_does_not_read(server: Server) -> None:
    """Back-pressure: over the transport's high-water mark ``put`` asks for a drain, which waits until the
    client reads; a client that reads is never waited for (the control: the first chunk)."""
    chunk = b"x" * 65536
    state: dict[str, object] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        request.transport.set_write_buffer_limits(high=1024)
        resp = LeanResponse(200, {"content-type": "text/event-stream"}, request=request)
        asks = [resp.put(b"x"), *(resp.put(chunk) for _ in range(8))]
        state["asks"] = asks
        drained = asyncio.ensure_future(resp.drain())
        state["drain"] = drained
        await drained
        resp.end()
        return resp

    server.handler = handler
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(req(extra=CLOSE))
    await until(lambda: "drain" in state, message="the server wrote past its high-water mark")
    asks = state["asks"]
    assert isinstance(asks, list) and not asks[0] and asks[-1]
    assert not state["drain"].done()  # type: ignore[attr-defined]
    data = await reader.read()  # reading lets it finish
    assert data.endswith(b"0\r\n\r\n") and data.count(chunk) == 8
    writer.close()


async def test_a_client_that_left_raises_on_the_next_write(server: Server) -> None:
    seen: list[BaseException] = []
    wrote = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = LeanResponse(200, {"content-type": "text/event-stream"}, request=request)
        resp.put(b"data: 1\n\n")
        wrote.set()
        try:
            await until(lambda: request.transport is None or request.transport.is_closing(),
                        message="the client's close reaches the server")
            resp.put(b"data: 2\n\n")
        except ConnectionResetError as exc:
            seen.append(exc)
            raise
        return resp

    server.handler = handler
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(req())
    await wrote.wait()
    assert (await reader.readuntil(b"data: 1\n\n")).startswith(b"HTTP/1.1 200 OK")  # the control: it wrote
    writer.close()
    await until(lambda: seen, message="the write after the client left raised")


async def test_a_cut_answer_closes_the_kept_connection(server: Server) -> None:
    """``cut``: aiohttp's server sees the answer finished but not to be kept, and closes."""
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = LeanResponse(200, {"content-type": "text/event-stream"}, request=request)
        resp.put(b"data: 1\n\n")
        resp.cut()
        return resp

    server.handler = handler
    data = await exchange(server.port, req() + req())  # the second request is never answered
    assert data.count(b"HTTP/1.1 200") == 1 and not data.endswith(b"0\r\n\r\n")


def test_its_headers_are_read_only() -> None:
    """A change after the handler returned would never be sent: it raises instead of being lost."""
    resp = LeanResponse(200, {"content-type": "application/json"}, body=b"{}")
    assert resp.headers["Content-Type"] == "application/json" and resp.content_type == "application/json"
    with pytest.raises(TypeError):
        resp.headers["x-late"] = "1"  # type: ignore[index]


async def test_an_answer_after_another_started_cuts_the_connection(server: Server) -> None:
    """A handler that started a stream and then returns another answer (the gateway's 500 after an
    unexpected error mid-relay) gets the connection cut, not a second head inside the first answer."""
    async def handler(request: web.Request) -> web.StreamResponse:
        started = LeanResponse(200, {"content-type": "text/event-stream"}, request=request)
        started.put(b"data: 1\n\n")
        return LeanResponse(500, {"content-type": "application/json"}, body=b'{"error":{}}')

    server.handler = handler
    data = await exchange(server.port, req(extra=CLOSE))  # closed after the answer either way
    assert data.count(b"HTTP/1.1 ") == 1 and data.endswith(b"data: 1\n\n\r\n") and b"500" not in data
