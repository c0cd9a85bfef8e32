"""A loopback TCP proxy that misbehaves on request: the network between the gateway and its dependencies.

Put one in front of the fake provider or in front of Redis and turn faults on
and off while traffic runs. Faults are fields of ``Faults`` (set them with
``proxy.set(...)``, clear with ``proxy.clear()``); they apply to every open and
new connection from the next chunk on:

- ``latency_s``: added to every chunk travelling back from the target (so the
  round trip grows by exactly that much; chunks keep their order and the
  throughput is not cut, as on a long link);
- ``bandwidth_bps``: bytes per second, per direction, per connection;
- ``slice_bytes`` / ``slice_gap_s``: each chunk is written in pieces of at most
  that many bytes, with a pause between pieces (exercises parsers that must cope
  with a message split anywhere);
- ``blackhole``: nothing passes in either direction and new connections are
  accepted but never connected onward. TCP never loses bytes silently, so bytes
  are held (with back pressure), not dropped: they flow again when it is lifted,
  as after a ``SIGCONT`` or a healed partition;
- ``reset_after_bytes``: a connection whose response side passed that many bytes
  is reset (RST, ``SO_LINGER`` 0) on both sides; ``0`` resets at accept;
- ``slow_close_s``: when one side closes, the other side's close is delayed (an EOF from either side
  closes the whole connection: HTTP and Redis clients never half-close, so nothing is lost by that).

``down()`` stops listening (connections are refused) and resets every open
connection; ``up()`` listens again on the same port. ``reset_all()`` resets the
open connections now. Everything ends with ``close()``; every wait inside is
bounded by the faults the test set, so nothing outlives the test.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field, fields, replace
from typing import Any, Self

CHUNK = 64 * 1024
HOLD_LIMIT = 1024 * 1024  # bytes held per direction while blackholed or delayed, before back pressure


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    latency_s: float = 0.0
    bandwidth_bps: int | None = None
    slice_bytes: int | None = None
    slice_gap_s: float = 0.0
    blackhole: bool = False
    reset_after_bytes: int | None = None
    slow_close_s: float = 0.0


@dataclass(slots=True)
class ProxyStats:
    accepted: int = 0
    refused_while_down: int = 0
    resets: int = 0
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client


def rst_close(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (``SO_LINGER`` on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Conn:
    """One proxied connection: a reader and a writer task per direction."""

    proxy: FaultProxy
    client_r: asyncio.StreamReader
    client_w: asyncio.StreamWriter
    target_r: asyncio.StreamReader | None = None
    target_w: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    down_bytes: int = 0
    closed: bool = False

    async def run(self) -> None:
        try:
            await self.proxy._unblocked()
            if self.closed:
                return
            try:
                self.target_r, self.target_w = await asyncio.wait_for(
                    asyncio.open_connection(self.proxy.target_host, self.proxy.target_port), 5.0)
            except (OSError, TimeoutError):
                self.reset()  # the target is unreachable: the client sees its connection reset
                return
            self.tasks = [asyncio.create_task(self._pipe(self.client_r, self.target_w, up=True)),
                          asyncio.create_task(self._pipe(self.target_r, self.client_w, up=False))]
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            self._close_all()
            self.proxy._conns.discard(self)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        """Read from one side, hold each chunk until it is due, write it to the other side."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=max(1, HOLD_LIMIT // CHUNK))
        sender = asyncio.create_task(self._send(queue, writer, up=up))
        loop = asyncio.get_running_loop()
        try:
            while not self.closed:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    break
                if not data:
                    break
                delay = 0.0 if up else self.proxy.faults.latency_s
                await queue.put((loop.time() + delay, data))
            await queue.put((loop.time(), b""))  # end of this direction, in order after the data
            await sender
        finally:
            sender.cancel()

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, *,
                    up: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self.proxy._unblocked()
            if not data:
                await asyncio.sleep(self.proxy.faults.slow_close_s)
                self._close_all()
                return
            await self._write(writer, data, up=up)

    async def _write(self, writer: asyncio.StreamWriter, data: bytes, *, up: bool) -> None:
        f = self.proxy.faults
        piece = f.slice_bytes or len(data)
        if f.bandwidth_bps:
            piece = min(piece, max(1, f.bandwidth_bps // 20))
        for start in range(0, len(data), piece):
            part = data[start:start + piece]
            if (
                not up
                and f.reset_after_bytes is not None
                and self.down_bytes + len(part) > f.reset_after_bytes
            ):
                part = part[:max(0, f.reset_after_bytes - self.down_bytes)]
                with contextlib.suppress(ConnectionError, OSError):
                    if part:
                        writer.write(part)
                        await writer.drain()
                        self._count(len(part), up=up)
                self.reset()
                return
            if f.bandwidth_bps:
                await asyncio.sleep(len(part) / f.bandwidth_bps)  # the time this piece takes on the wire
            try:
                writer.write(part)
                await writer.drain()
            except (ConnectionError, OSError):
                self._close_all()
                return
            self._count(len(part), up=up)
            if f.slice_bytes and f.slice_gap_s and start + piece < len(data):
                await asyncio.sleep(f.slice_gap_s)

    def _count(self, n: int, *, up: bool) -> None:
        if up:
            self.proxy.stats.bytes_up += n
        else:
            self.down_bytes += n
            self.proxy.stats.bytes_down += n

    def reset(self) -> None:
        """RST both sides now."""
        if self.closed:
            return
        self.proxy.stats.resets += 1
        self.closed = True
        for w in (self.client_w, self.target_w):
            if w is not None:
                rst_close(w)
        self._cancel_tasks()

    def _close_all(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in (self.client_w, self.target_w):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.close()
        self._cancel_tasks()

    def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class FaultProxy:
    """``FaultProxy(host, port)``; ``await start()``; point clients at ``.port`` / ``.url``."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0,
                 scheme: str = "http") -> None:
        self.target_host, self.target_port = target_host, target_port
        self.host, self.port, self.scheme = host, port, scheme
        self.faults = Faults()
        self.stats = ProxyStats()
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = asyncio.Event()
        self._open.set()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True,
                                                  backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def set(self, **changes: Any) -> None:
        """Change some faults (the others keep their value)."""
        known = {f.name for f in fields(Faults)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown faults: {sorted(unknown)}")
        self.faults = replace(self.faults, **changes)
        if self.faults.blackhole:
            self._open.clear()
        else:
            self._open.set()

    def clear(self) -> None:
        self.faults = Faults()
        self._open.set()

    async def _unblocked(self) -> None:
        if not self._open.is_set():
            await self._open.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        conn = _Conn(self, reader, writer)
        self._conns.add(conn)
        if self.faults.reset_after_bytes == 0:
            conn.reset()
            self._conns.discard(conn)
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await conn.run()
        finally:
            if task is not None:
                self._tasks.discard(task)

    def reset_all(self) -> int:
        """RST every open connection; returns how many."""
        conns = list(self._conns)
        for conn in conns:
            conn.reset()
        return len(conns)

    async def down(self) -> None:
        """Stop listening (connect: refused) and reset what is open."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.reset_all()
        await self._settle()

    async def up(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            await self.start()

    async def _settle(self) -> None:
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    async def close(self) -> None:
        self._open.set()
        await self.down()
        for task in list(self._tasks):
            task.cancel()
        await self._settle()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
