"""The keep-alive pool of one upstream: LIFO (the warmest connection first), at most ``max_connections``
open or opening (the rest wait in arrival order), idle connections closed after ``keepalive_s``.

Only ``release(conn, reusable=True)`` puts a connection back, and the caller says so only after an
answer read to its end with neither side asking to close; anything else closes it.
"""
from __future__ import annotations

import asyncio
import collections
import ssl

from gateway.rawhttp.connection import RawConnection
from gateway.rawhttp.errors import ConnectFailed, ConnectTimeout
from gateway.rawhttp.origin import Origin


class RawPool:
    __slots__ = ("_closed", "_connecting", "_idle", "_open", "_ssl", "_sweep", "_waiters", "keepalive_s",
                 "max_connections", "origin")

    def __init__(self, origin: Origin, max_connections: int, keepalive_s: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.origin = origin
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self._ssl = ssl_context if ssl_context is not None else origin.ssl_context()
        self._idle: list[RawConnection] = []  # oldest first; taken from the end
        self._open: set[RawConnection] = set()
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """Requests queued for a connection (the pool is at ``max_connections``)."""
        return len(self._waiters)

    def connections(self) -> tuple[RawConnection, ...]:
        return tuple(self._open)

    async def acquire(self, connect_s: float, fresh: bool = False) -> RawConnection:
        """An idle connection, else a new one below the limit, else the next one released.
        ``fresh``: a new connection, made room for by closing the oldest idle one at the limit."""
        while True:
            if self._closed:
                raise ConnectionResetError("the upstream pool is closed")
            conn = None if fresh else self._take_idle()
            if conn is not None:
                return conn
            if fresh and self._idle and len(self._open) + self._connecting >= self.max_connections:
                self._drop(self._idle.pop(0))
            if len(self._open) + self._connecting < self.max_connections:
                return await self._connect(connect_s)
            await self._wait_turn()

    def _take_idle(self) -> RawConnection | None:
        idle = self._idle
        if not idle:
            return None
        expired_before = asyncio.get_running_loop().time() - self.keepalive_s
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is not None and not transport.is_closing() and conn.idle_since > expired_before:
                return conn
            self._drop(conn)
        return None

    async def _wait_turn(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self._wake()  # our turn came as we left: pass it on
            raise

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, connect_s: float) -> RawConnection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        self._connecting += 1
        try:
            async with asyncio.timeout(connect_s):
                _, conn = await loop.create_connection(
                    lambda: RawConnection(loop, self._lost), origin.host, origin.port, ssl=self._ssl,
                    server_hostname=origin.host if self._ssl is not None else None)
        except BaseException as exc:
            self._connecting -= 1
            self._wake()  # the slot is free again
            if isinstance(exc, TimeoutError):
                raise ConnectTimeout() from exc
            if isinstance(exc, OSError):
                raise ConnectFailed(exc) from exc
            raise
        self._connecting -= 1
        if self._closed:
            self._drop(conn)
            raise ConnectionResetError("the upstream pool is closed")
        self._open.add(conn)
        return conn

    def release(self, conn: RawConnection, reusable: bool) -> None:
        conn.busy = False
        conn.waiter = None
        transport = conn.transport
        if reusable and not self._closed and transport is not None and not transport.is_closing():
            conn.reused = True
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
            self._arm_sweep()
        else:
            self._drop(conn)
        self._wake()

    def _drop(self, conn: RawConnection) -> None:
        self._open.discard(conn)
        if conn.transport is not None:
            conn.transport.close()

    def _lost(self, conn: RawConnection) -> None:
        """The connection is gone (either side closed it): its slot is free."""
        if conn in self._open:
            self._open.discard(conn)
            if conn in self._idle:
                self._idle.remove(conn)
            self._wake()

    def _arm_sweep(self) -> None:
        if self._sweep is None and self._idle:
            when = self._idle[0].idle_since + self.keepalive_s
            self._sweep = asyncio.get_running_loop().call_at(when, self._on_sweep)

    def _on_sweep(self) -> None:
        """One timer for the whole pool: close what idled past ``keepalive_s`` (oldest first), re-arm."""
        self._sweep = None
        expired_before = asyncio.get_running_loop().time() - self.keepalive_s
        idle = self._idle
        while idle and idle[0].idle_since <= expired_before:
            self._drop(idle.pop(0))
        self._arm_sweep()

    async def close(self) -> None:
        """Close every connection, idle or busy (a busy one's body then fails as reset mid-stream)."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._idle.clear()
        for conn in list(self._open):
            self._drop(conn)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("the upstream pool is closed"))
