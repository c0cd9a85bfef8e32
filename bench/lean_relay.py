"""A lean relay: ``bare_relay.py``'s job on a raw ``asyncio.Protocol`` data path (issue #21's evaluation).

It answers the same routes as the bare relay (``/_bare/health``, anything else is forwarded), forwards the
client's headers (hop-by-hop dropped) and body to the upstream, and relays the answer as it arrives: a
body of known length with ``Content-Length``, anything else chunked, an SSE stream chunk by chunk, never
buffered. Each half of aiohttp can be swapped out separately, so the four combinations can be measured:

* ``--server raw``: an ``asyncio.Protocol`` fed by aiohttp's own C parser (llhttp; no new dependency),
  or by ``httptools`` (``--parser httptools``, when installed) -- a status line per (status, reason)
  built once, the response head joined from the upstream's raw header bytes (never decoded), head and
  body in one ``transport.write`` when the body is already there, one write per chunk after that;
  keep-alive, HTTP/1.0 (no chunked: close at the end), ``Expect: 100-continue``, pipelined requests
  (served in order), write back-pressure (``pause_writing``/drain), read back-pressure (aiohttp's
  ``StreamReader`` pauses the transport), a client that goes away (its request is cancelled and the
  upstream connection closed), a malformed request (400 and close).
* ``--server aiohttp``: an aiohttp ``web`` handler, as in the bare relay.
* ``--client raw``: an ``asyncio.Protocol`` per upstream connection with aiohttp's C response parser and
  a small keep-alive pool (LIFO, a stale pooled connection retried once on a fresh one); the request
  head and body in one write.
* ``--client aiohttp``: a pooled ``aiohttp.ClientSession``, as in the bare relay.

Both clients pass the answer's bytes through undecoded (no auto-decompression: ``Content-Encoding`` is
forwarded), unlike the bare relay, which decompresses and drops it.

``--server raw --parser httptools`` parses requests with httptools instead (when installed), and
``--server splice`` runs ``bench.lean_splice`` (httptools callbacks both ways, no task per request).

Not a product: no timeouts, no header-size policy beyond the parser's defaults (8 KB lines, 128 headers),
no request-body size limit, no trailers forwarded, no upgrades. ``bench/results/2026-12-06-lean-relay.md``
has the measurements and lists what a server on this path would still need.

    python -m bench.lean_relay --upstream http://127.0.0.1:9000 --port 8082 --server raw --client raw
    python -m bench.lean_bench --reps 3        # the four combinations against bare and direct
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import importlib
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, HttpResponseParser, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict

RawHeaders = tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]]

HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                 b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length",
                 b"expect"})
RESP_DROP = HOP | {b"server"}
HEALTH = "/_bare/health"
LIMIT = 2 ** 16  # StreamReader's low-water mark: reading pauses past twice this much unread
_STATUS_LINES: dict[tuple[int, str], bytes] = {}


def status_line(status: int, reason: str) -> bytes:
    """``HTTP/1.1 200 OK\\r\\n``, built once per (status, reason)."""
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        line = _STATUS_LINES[(status, reason)] = f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")
    return line


def content_length(headers: RawHeaders) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value)
    return None


# ---------------------------------------------------------------------------------------------- upstream


class UpResponse(Protocol):
    """What a server half needs of an upstream answer, whichever client fetched it."""

    status: int
    reason: str
    raw_headers: RawHeaders
    length: int | None  # the body's length when the upstream framed it with Content-Length

    async def readany(self) -> bytes: ...  # b"" at the end

    def at_eof(self) -> bool: ...

    def release(self, ok: bool) -> None: ...  # ok: read to the end, the connection may be reused


class Client(Protocol):
    async def request(self, method: str, target: str, headers: RawHeaders, body: bytes) -> UpResponse: ...

    async def close(self) -> None: ...


class _UpConn(BaseProtocol):
    """One upstream connection: parses answers with aiohttp's C parser, one request at a time."""

    __slots__ = ("rp", "pool", "waiter", "msg", "payload", "head_only", "reused")

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: RawClient) -> None:
        super().__init__(loop)
        self.pool = pool
        self.rp: Any = self._new_parser(with_body=True)
        self._parser = self.rp
        self.waiter: asyncio.Future[None] | None = None
        self.msg: Any = None
        self.payload: Any = None
        self.head_only = False
        self.reused = False

    def _new_parser(self, with_body: bool) -> Any:
        return HttpResponseParser(self, self._loop, LIMIT, response_with_body=with_body, read_until_eof=True,
                                  auto_decompress=False)

    def send(self, data: bytes, head_only: bool) -> asyncio.Future[None]:
        if head_only != self.head_only:  # a HEAD answer has no body whatever its Content-Length says
            self.rp = self._parser = self._new_parser(with_body=not head_only)
            self.head_only = head_only
        self.msg = self.payload = None
        waiter = self.waiter = self._loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        return waiter

    def data_received(self, data: bytes) -> None:
        try:
            messages, _, _ = self.rp.feed_data(data)
        except BaseException as exc:  # malformed answer
            self._fail(exc)
            return
        for msg, payload in messages:
            self.msg, self.payload = msg, payload
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.payload is not None and not self.payload.is_eof():
            self.payload.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.pool.forget(self)
        if self.payload is not None and not self.payload.is_eof():
            try:
                self.rp.feed_eof()  # an answer read until EOF ends here
            except BaseException as err:
                self.payload.set_exception(err)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("upstream closed the connection"))


class _RawResponse:
    __slots__ = ("status", "reason", "raw_headers", "length", "conn", "payload", "should_close")

    def __init__(self, conn: _UpConn) -> None:
        msg = conn.msg
        self.status: int = msg.code
        self.reason: str = msg.reason
        self.raw_headers: RawHeaders = msg.raw_headers
        self.length = None if msg.chunked else content_length(msg.raw_headers)
        self.conn = conn
        self.payload = conn.payload
        self.should_close: bool = msg.should_close

    async def readany(self) -> bytes:
        return await self.payload.readany()  # type: ignore[no-any-return]

    def at_eof(self) -> bool:
        return self.payload.is_eof()  # type: ignore[no-any-return]

    def release(self, ok: bool) -> None:
        self.conn.pool.give_back(self.conn, ok and not self.should_close and self.payload.is_eof())


class RawClient:
    """A keep-alive pool of raw upstream connections to one host (LIFO: the warmest first)."""

    def __init__(self, upstream: str, max_idle: int = 256) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http":
            raise ValueError("the raw client speaks plain http only")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/").encode()
        self.host_line = f"Host: {parts.netloc}\r\n".encode()
        self.idle: list[_UpConn] = []
        self.max_idle = max_idle
        self.open: set[_UpConn] = set()

    async def _connect(self) -> _UpConn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _UpConn(loop, self), self.host, self.port)
        self.open.add(conn)
        return conn

    async def request(self, method: str, target: str, headers: RawHeaders, body: bytes) -> UpResponse:
        framed = body or method in ("POST", "PUT", "PATCH")
        head = b"".join([method.encode(), b" ", self.prefix, target.encode(), b" HTTP/1.1\r\n",
                         self.host_line, *[k + b": " + v + b"\r\n" for k, v in headers],
                         b"Content-Length: %d\r\n\r\n" % len(body) if framed else b"\r\n"])
        data = head + body if len(body) < 65536 else None
        for attempt in (0, 1):
            conn: _UpConn | None = None
            while self.idle:
                candidate = self.idle.pop()
                if candidate.transport is not None and not candidate.transport.is_closing():
                    conn = candidate
                    break
            if conn is None:
                conn = await self._connect()
            try:
                if data is not None:
                    waiter = conn.send(data, method == "HEAD")
                else:  # a big body: the head, then the body without copying it into one buffer
                    waiter = conn.send(head, method == "HEAD")
                    assert conn.transport is not None
                    conn.transport.write(body)
                if conn._paused:
                    await conn._drain_helper()
                await waiter
            except ConnectionResetError:
                # a pooled connection the upstream closed meanwhile: once more on a new one (no answer came)
                if conn.reused and attempt == 0 and conn.msg is None:
                    continue
                raise
            except BaseException:
                self.give_back(conn, False)
                raise
            return _RawResponse(conn)
        raise AssertionError("unreachable")

    def give_back(self, conn: _UpConn, reusable: bool) -> None:
        conn.waiter = None
        if reusable and conn.transport is not None and len(self.idle) < self.max_idle:
            conn.reused = True
            self.idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def forget(self, conn: _UpConn) -> None:
        self.open.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    async def close(self) -> None:
        for conn in list(self.open):
            if conn.transport is not None:
                conn.transport.close()


class _AioResponse:
    __slots__ = ("status", "reason", "raw_headers", "length", "resp")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.status = resp.status
        self.reason = resp.reason or ""
        self.raw_headers: RawHeaders = resp.raw_headers
        te = resp.headers.get("Transfer-Encoding", "")
        self.length = None if "chunked" in te.lower() else resp.content_length

    async def readany(self) -> bytes:
        return await self.resp.content.readany()

    def at_eof(self) -> bool:
        return self.resp.content.is_eof()

    def release(self, ok: bool) -> None:
        if ok:
            self.resp.release()
        else:
            self.resp.close()


class AioClient:
    """The bare relay's client: one pooled ``aiohttp.ClientSession`` (but no auto-decompression)."""

    def __init__(self, upstream: str, max_connections: int = 2048) -> None:
        self.upstream = upstream.rstrip("/")
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def request(self, method: str, target: str, headers: RawHeaders, body: bytes) -> UpResponse:
        hdrs = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)
        resp = await self.session.request(method, self.upstream + target, data=body, headers=hdrs,
                                          allow_redirects=False)
        return _AioResponse(resp)

    async def close(self) -> None:
        await self.session.close()


def make_client(kind: str, upstream: str) -> Client:
    return RawClient(upstream) if kind == "raw" else AioClient(upstream)


# ------------------------------------------------------------------------------------------ raw server

_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n"
                b"Connection: close\r\n\r\nBad Request")
_BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n"
_HEALTH = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_KEEP = b"\r\n"
_CLOSE = b"Connection: close\r\n\r\n"


class RawServerConn(BaseProtocol):
    """One client connection on the raw server: requests parsed by aiohttp's C parser, served in order."""

    __slots__ = ("rp", "client", "task", "queue", "closing")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Client) -> None:
        super().__init__(loop)
        self.rp: Any = HttpRequestParser(self, loop, LIMIT, auto_decompress=False)
        self._parser = self.rp
        self.client = client
        self.task: asyncio.Task[bool] | None = None
        self.queue: collections.deque[tuple[RawRequestMessage, Any]] = collections.deque()
        self.closing = False

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            messages, _, _ = self.rp.feed_data(data)
        except HttpProcessingError:
            self._bad_request()
            return
        for msg, payload in messages:
            if self.task is None:
                self._start(msg, payload)
            else:
                self.queue.append((msg, payload))

    def _bad_request(self) -> None:
        self.closing = True
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.write(_BAD_REQUEST)
            self.transport.close()

    def _start(self, msg: RawRequestMessage, payload: Any) -> None:
        task = self.task = self._loop.create_task(self.handle(msg, payload))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[bool]) -> None:
        self.task = None
        keep = not task.cancelled() and task.exception() is None and task.result()
        if not keep:
            self.closing = True
            if self.transport is not None:
                self.transport.close()
            return
        if self.queue:
            msg, payload = self.queue.popleft()
            self._start(msg, payload)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.closing = True
        if self.task is not None:
            self.task.cancel()  # the client went away: stop reading the upstream, drop its connection
        try:
            self.rp.feed_eof()
        except HttpProcessingError:
            pass

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        transport.write(data)

    async def handle(self, msg: RawRequestMessage, payload: Any) -> bool:
        """Serve one request; True when the connection stays open for the next one."""
        keep = not msg.should_close
        if msg.path == HEALTH:
            self._write(_HEALTH + (_KEEP if keep else _CLOSE) + b"ok")
            return keep
        if payload is not EMPTY_PAYLOAD:
            expect = msg.headers.get("Expect")
            if expect is not None and expect.lower() == "100-continue":
                self._write(_CONTINUE)
            body = await payload.read()
        else:
            body = b""
        headers = [(k, v) for k, v in msg.raw_headers if k.lower() not in HOP]
        try:
            up = await self.client.request(msg.method, msg.path, headers, body)
        except (OSError, HttpProcessingError, aiohttp.ClientError):
            self._write(_BAD_GATEWAY + (_KEEP if keep else _CLOSE) + b"Bad Gateway")
            return keep
        ok = False
        try:
            keep = await self._relay(up, msg.method, msg.version[1] >= 1, keep)
            ok = True
        finally:
            up.release(ok)
        return keep

    async def _relay(self, up: UpResponse, method: str, http11: bool, keep: bool) -> bool:
        head, no_body, chunked, keep = _response_head(up, method, http11, keep)
        if no_body:
            self._write(head)
            return keep
        data = await up.readany()
        if not data:
            self._write(head + b"0\r\n\r\n" if chunked else head)
            return keep
        if chunked:
            out = head + b"%x\r\n" % len(data) + data + b"\r\n"
            if up.at_eof():
                out += b"0\r\n\r\n"
        else:
            out = head + data
        while True:
            self._write(out)
            if self._paused:
                await self._drain_helper()
            if up.at_eof():
                if chunked and not out.endswith(b"0\r\n\r\n"):
                    self._write(b"0\r\n\r\n")
                return keep
            data = await up.readany()
            if not data:
                if chunked:
                    self._write(b"0\r\n\r\n")
                return keep
            out = b"%x\r\n" % len(data) + data + b"\r\n" if chunked else data


def _response_head(up: UpResponse, method: str, http11: bool, keep: bool) -> tuple[bytes, bool, bool, bool]:
    """(head, no body, chunked, keep-alive): the status line built once, the upstream's raw headers."""
    parts = [status_line(up.status, up.reason)]
    parts += [k + b": " + v + b"\r\n" for k, v in up.raw_headers if k.lower() not in RESP_DROP]
    length = up.length
    no_body = method == "HEAD" or up.status in (204, 304)
    chunked = False
    if length is not None:
        parts.append(b"Content-Length: %d\r\n" % length)
    elif not no_body and http11:
        parts.append(b"Transfer-Encoding: chunked\r\n")
        chunked = True
    elif not no_body:
        keep = False  # HTTP/1.0 and no length: the end of the body is the end of the connection
    parts.append(_KEEP if keep else _CLOSE)
    return b"".join(parts), no_body, chunked, keep


class HttptoolsServerConn(RawServerConn):
    """The raw server with ``httptools`` (llhttp, callbacks) for a parser instead of aiohttp's: no header
    multidict, URL, message tuple or StreamReader per request; the body is gathered in a list."""

    __slots__ = ("url", "headers", "body", "size", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Client) -> None:
        BaseProtocol.__init__(self, loop)
        self.rp = importlib.import_module("httptools").HttpRequestParser(self)
        self.client = client
        self.task = None
        self.queue = collections.deque()
        self.closing = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.pending: collections.deque[tuple[str, str, list[tuple[bytes, bytes]], bytes, bool, bool]] = (
            collections.deque())

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= 128:
            raise ValueError("too many headers")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        for name, value in self.headers:
            if name.lower() == b"expect" and value.lower() == b"100-continue" and self.transport is not None:
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > 64 * 1024 * 1024:
            raise ValueError("body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        rp = self.rp
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        request = (rp.get_method().decode(), self.url.decode("latin-1"), self.headers, body,
                   rp.should_keep_alive(), rp.get_http_version() != "1.0")
        if self.task is None:
            self._start_ht(request)
        else:
            self.pending.append(request)
            if len(self.pending) > 16 and self.transport is not None:
                self.transport.pause_reading()  # a client pipelining far ahead waits

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.rp.feed_data(data)
        except Exception:  # httptools.HttpParserError, an upgrade, a callback's limit
            self._bad_request()

    def _start_ht(self, request: tuple[str, str, list[tuple[bytes, bytes]], bytes, bool, bool]) -> None:
        task = self.task = self._loop.create_task(self.handle_ht(*request))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[bool]) -> None:
        self.task = None
        keep = not task.cancelled() and task.exception() is None and task.result()
        if not keep:
            self.closing = True
            if self.transport is not None:
                self.transport.close()
            return
        if self.pending:
            self._start_ht(self.pending.popleft())
            if len(self.pending) <= 16 and self.transport is not None:
                self.transport.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        BaseProtocol.connection_lost(self, exc)
        self.closing = True
        if self.task is not None:
            self.task.cancel()

    async def handle_ht(self, method: str, path: str, raw: list[tuple[bytes, bytes]], body: bytes, keep: bool,
                        http11: bool) -> bool:
        if path == HEALTH:
            self._write(_HEALTH + (_KEEP if keep else _CLOSE) + b"ok")
            return keep
        headers = [(k, v) for k, v in raw if k.lower() not in HOP]
        try:
            up = await self.client.request(method, path, headers, body)
        except (OSError, HttpProcessingError, aiohttp.ClientError):
            self._write(_BAD_GATEWAY + (_KEEP if keep else _CLOSE) + b"Bad Gateway")
            return keep
        ok = False
        try:
            keep = await self._relay(up, method, http11, keep)
            ok = True
        finally:
            up.release(ok)
        return keep


async def serve_raw(client: Client, host: str, port: int, parser: str = "aiohttp") -> asyncio.Server:
    loop = asyncio.get_running_loop()
    conn = HttptoolsServerConn if parser == "httptools" else RawServerConn
    return await loop.create_server(lambda: conn(loop, client), host, port, backlog=2048, reuse_address=True)


# -------------------------------------------------------------------------------------- aiohttp server

CLIENT = web.AppKey("client", Client)


async def aio_relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = [(k, v) for k, v in request.raw_headers if k.lower() not in HOP]
    up = await request.app[CLIENT].request(request.method, request.raw_path, headers, body)
    ok = False
    try:
        out = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in up.raw_headers
                          if k.lower() not in RESP_DROP)
        resp = web.StreamResponse(status=up.status, reason=up.reason, headers=out)
        if up.length is not None:
            resp.content_length = up.length
        await resp.prepare(request)
        while data := await up.readany():
            await resp.write(data)
        await resp.write_eof()
        ok = True
        return resp
    finally:
        up.release(ok)


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app(client_factory: Callable[[], Client]) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def client_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[CLIENT] = client_factory()
        yield
        await app[CLIENT].close()

    app.cleanup_ctx.append(client_ctx)
    app.router.add_get(HEALTH, health)
    app.router.add_route("*", "/{tail:.*}", aio_relay)
    return app


# ------------------------------------------------------------------------------------------------ main


async def _run_raw(args: argparse.Namespace) -> None:
    if args.server == "splice":
        from bench.lean_splice import serve_splice

        await serve_splice(args.upstream, args.host, args.port)
        await asyncio.Event().wait()
    client = make_client(args.client, args.upstream)
    server = await serve_raw(client, args.host, args.port, args.parser)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()
        await client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="lean relay (issue #21: raw protocol vs aiohttp, per half)")
    parser.add_argument("--upstream", required=True, help="root URL of the upstream, e.g. http://127.0.0.1:9000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--server", choices=("raw", "aiohttp", "splice"), default="raw",
                        help="splice: bench.lean_splice, httptools callbacks both ways (--client ignored)")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw")
    parser.add_argument("--parser", choices=("aiohttp", "httptools"), default="aiohttp",
                        help="the raw server's request parser (httptools: when installed)")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    if args.server == "aiohttp":
        web.run_app(build_app(lambda: make_client(args.client, args.upstream)), host=args.host,
                    port=args.port, access_log=None, handler_cancellation=True, print=None, loop=loop)
        return
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_run_raw(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

