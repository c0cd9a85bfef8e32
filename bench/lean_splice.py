"""The floor of a Python relay: both halves on httptools callbacks, no task, future or stream per request.

``python -m bench.lean_relay --server splice`` (needs ``httptools``). A complete request is sent at once on
a pooled upstream connection from the parser's callback (a task only when a new connection must be
opened); the upstream answer's parser callbacks write straight to the client's transport: the head when
the upstream's head is parsed (with the first body bytes when they came in the same read: one write),
each body piece as it is parsed, chunk-framed unless the upstream gave a Content-Length. Back-pressure
is transport to transport (the client's ``pause_writing`` pauses reading the upstream); a client that
goes away closes its upstream connection; a broken upstream answer aborts the client's connection.

This is what a gateway would look like if its per-chunk work (usage, SSE events) ran in callbacks
rather than in a task awaiting a stream: the figure it gets is the bound of the lean path, not a design
the gateway can adopt as is (policies that await, retries before the first byte, hedging, need a task).
"""
from __future__ import annotations

import asyncio
import importlib
from typing import Any
from urllib.parse import urlsplit

from bench.lean_relay import (
    _BAD_GATEWAY,
    _BAD_REQUEST,
    _CLOSE,
    _CONTINUE,
    _HEALTH,
    _KEEP,
    HEALTH,
    HOP,
    RESP_DROP,
)

httptools: Any = importlib.import_module("httptools")

# method, url, headers, body, keep-alive, HTTP/1.1
_Request = tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, bool, bool]


class SplicePool:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/").encode()
        self.host_line = f"Host: {parts.netloc}\r\n".encode()
        self.idle: list[UpstreamConn] = []

    def take(self) -> UpstreamConn | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def connect(self) -> UpstreamConn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: UpstreamConn(self), self.host, self.port)
        return conn


class UpstreamConn(asyncio.Protocol):
    """An upstream connection whose answer's parser callbacks write to the client connection it serves."""

    def __init__(self, pool: SplicePool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientConn | None = None
        self.head: list[bytes] = []
        self.pending_head: bytes | None = None
        self.chunked = False
        self.reason = b""

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:  # a malformed answer: the client's connection cannot be finished cleanly
            if self.client is not None:
                self.client.upstream_broke(self)
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        if self.client is not None:
            self.client.upstream_broke(self)

    # the request
    def send(self, client: ClientConn, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]],
             body: bytes) -> None:
        self.client = client
        self.head = []
        self.pending_head = None
        self.reason = b""
        framed = body or method in (b"POST", b"PUT", b"PATCH")
        data = b"".join([method, b" ", self.pool.prefix, url, b" HTTP/1.1\r\n", self.pool.host_line,
                         *[k + b": " + v + b"\r\n" for k, v in headers],
                         b"Content-Length: %d\r\n\r\n" % len(body) if framed else b"\r\n", body])
        assert self.transport is not None
        self.transport.write(data)

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in RESP_DROP:
            self.head.append(name + b": " + value + b"\r\n")
        elif name.lower() == b"content-length":
            self.head.append(b"Content-Length: " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        client = self.client
        if client is None:
            return
        status = self.parser.get_status_code()
        length_known = any(h.startswith(b"Content-Length: ") for h in self.head)
        no_body = client.method == b"HEAD" or status in (204, 304)
        self.chunked = not length_known and not no_body and client.http11
        if self.chunked:
            self.head.append(b"Transfer-Encoding: chunked\r\n")
        elif not length_known and not no_body:
            client.keep = False
        self.head.append(_KEEP if client.keep else _CLOSE)
        self.pending_head = b"HTTP/1.1 %d %s\r\n" % (status, self.reason) + b"".join(self.head)
        if client.method == b"HEAD":  # httptools cannot be told that a HEAD answer has no body: stop here
            client.write(self.pending_head)
            self.client = None
            if self.transport is not None:
                self.transport.close()
            client.finished()

    def on_body(self, body: bytes) -> None:
        client = self.client
        if client is None:
            return
        data = b"%x\r\n" % len(body) + body + b"\r\n" if self.chunked else body
        if self.pending_head is not None:
            data = self.pending_head + data
            self.pending_head = None
        client.write(data)

    def on_message_complete(self) -> None:
        client = self.client
        if client is None:
            return
        data = self.pending_head or b""
        self.pending_head = None
        if self.chunked:
            data += b"0\r\n\r\n"
        if data:
            client.write(data)
        self.client = None
        if self.parser.should_keep_alive() and self.transport is not None:
            self.pool.idle.append(self)
        elif self.transport is not None:
            self.transport.close()
        client.finished()


class ClientConn(asyncio.Protocol):
    """A client connection: requests parsed by httptools, each spliced onto an upstream connection."""

    def __init__(self, pool: SplicePool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.queue: list[_Request] = []
        self.current: _Request | None = None
        self.responded = False
        self.retried = False
        self.upstream: UpstreamConn | None = None
        self.busy = False
        self.method = b""
        self.keep = True
        self.http11 = True

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            if self.transport is not None:
                self.transport.write(_BAD_REQUEST)
                self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        up = self.upstream
        if up is not None:  # the client went away mid-answer: that upstream connection is not reusable
            self.upstream = None
            up.client = None
            if up.transport is not None:
                up.transport.close()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []

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
        self.body.append(body)

    def on_message_complete(self) -> None:
        p = self.parser
        request = (p.get_method(), self.url, [(k, v) for k, v in self.headers if k.lower() not in HOP],
                   b"".join(self.body), p.should_keep_alive(), p.get_http_version() != "1.0")
        if self.busy:
            self.queue.append(request)
        else:
            self.start(request)

    # serving
    def start(self, request: _Request) -> None:
        method, url, headers, body, keep, http11 = request
        self.current, self.responded, self.retried = request, False, False
        self.busy = True
        self.method, self.keep, self.http11 = method, keep, http11
        if url == HEALTH.encode():
            self.write(_HEALTH + (_KEEP if keep else _CLOSE) + b"ok")
            self.finished()
            return
        up = self.pool.take()
        if up is not None:
            self.upstream = up
            up.send(self, method, url, headers, body)
        else:
            self.loop.create_task(self._connect_and_send(method, url, headers, body))

    async def _connect_and_send(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]],
                                body: bytes) -> None:
        try:
            up = await self.pool.connect()
        except OSError:
            self.write(_BAD_GATEWAY + (_KEEP if self.keep else _CLOSE) + b"Bad Gateway")
            self.finished()
            return
        if self.transport is None:
            if up.transport is not None:
                up.transport.close()
            return
        self.upstream = up
        up.send(self, method, url, headers, body)

    def write(self, data: bytes) -> None:
        self.responded = True
        if self.transport is not None:
            self.transport.write(data)

    def finished(self) -> None:
        self.upstream = None
        self.busy = False
        if not self.keep:
            if self.transport is not None:
                self.transport.close()
            return
        if self.queue:
            self.start(self.queue.pop(0))

    def upstream_broke(self, up: UpstreamConn) -> None:
        if self.upstream is not up:
            return
        self.upstream = None
        up.client = None
        if not self.responded and self.current is not None:
            if not self.retried:  # a pooled connection the upstream had closed: once more, on a new one
                self.retried = True
                method, url, headers, body, _, _ = self.current
                self.loop.create_task(self._connect_and_send(method, url, headers, body))
                return
            self.write(_BAD_GATEWAY + (_KEEP if self.keep else _CLOSE) + b"Bad Gateway")
            self.finished()
        elif self.transport is not None:
            self.transport.abort()  # the answer is cut: the client must see it


async def serve_splice(upstream: str, host: str, port: int) -> tuple[asyncio.Server, SplicePool]:
    loop = asyncio.get_running_loop()
    pool = SplicePool(upstream)
    server = await loop.create_server(lambda: ClientConn(pool), host, port, backlog=2048, reuse_address=True)
    return server, pool
