"""A TCP server whose bytes the test scripts: framings, stalls, resets and malformed answers that the fake
provider (``gateway/mock``) never sends. It counts the connections it accepted and those the client
closed, so keep-alive reuse and closes can be asserted from the server's side."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Handler = Callable[["Peer"], Awaitable[None]]


class Peer:
    """One accepted connection; ``index`` counts from 0 in accept order."""

    def __init__(self, server: RawServer, index: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server, self.index, self.reader, self.writer = server, index, reader, writer
        self.requests: list[bytes] = []  # the heads (and bodies) read on this connection

    async def request(self) -> bytes | None:
        """The next request's head and body; None when the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.server.client_closed += 1
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await self.reader.readexactly(length) if length else b""
        self.requests.append(head + body)
        self.server.heads.append(head.decode("latin-1"))
        return head + body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """An RST instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.writer.transport.abort()


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.client_closed = 0
        self.heads: list[str] = []
        self.peers: list[Peer] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(self, self.accepted, reader, writer)
        self.accepted += 1
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for peer in self.peers:
                peer.writer.close()
            await self._server.wait_closed()


def answer(body: bytes = b"ok", status: str = "200 OK", headers: str = "") -> bytes:
    """A Content-Length answer."""
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def chunked(*chunks: bytes, headers: str = "") -> bytes:
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{headers}"
            "Transfer-Encoding: chunked\r\n\r\n")
    return head.encode() + b"".join(chunk_of(c) for c in chunks) + b"0\r\n\r\n"


def chunk_of(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def keep_answering(peer: Peer, reply: bytes = b"") -> None:
    """Answer each request on the connection with ``reply`` (default ``answer()``) until the client closes."""
    while await peer.request() is not None:
        await peer.send(reply or answer())


@asynccontextmanager
async def raw_servers() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    """``start(handler)`` starts a ``RawServer``; every one started is closed on the way out."""
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        server = await RawServer(handler).start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.close()
