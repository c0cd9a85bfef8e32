"""One multiplexed Redis connection for the hot path: a batch of commands is one write, replies come in order.

The awaited commands of a loop pass (``gateway.state.pipelining``) and the deferred writes
(``gateway.state.write_behind``) used to go out as redis-py pipelines: a ``Pipeline`` object, a pool
checkout, a ``StreamWriter`` write and a coroutine reading each reply through the ``StreamReader``,
~50 µs of client CPU per round trip of 3 commands here. On a ``Lane`` a batch is packed by hiredis in
one call, written straight to the transport, and the replies are parsed by a ``hiredis.Reader`` fed
from ``data_received``; the batch's callback gets them all (~11 µs for the same batch, measured in
``bench/results/2026-12-06-shared-state-cost.md``): ``submit`` takes the hot path's batches from the loop
callback that has them (no task, no future; ``bench/results/2026-12-07-host-state-cost.md``), ``run`` awaits
a future (connecting, ``NOSCRIPT`` reloads, everything off the hot path). Redis answers a connection's
commands in the order it read them, so batches written one after another need no lock: each waits in a FIFO
for its replies.
The batches of one loop pass (the awaited commands', the deferred writes') leave in one write. One watchdog
timer per connection bounds the submitted batches (``_Protocol.watch``).

The connection is opened by redis-py (its URL parsing, ``AUTH``, ``SELECT``, TLS), then its transport is
handed to this protocol. Any failure (connection lost, a batch cancelled or timed out while waiting)
closes it and fails every batch still waiting, as redis-py does with a connection it cannot trust to be
in step; the next batch opens a new one. A command Redis refuses is that command's reply (a
``RedisError`` instance), like ``Pipeline.execute(raise_on_error=False)``; replies are raw (bytes, ints,
lists: no redis-py response callbacks).
"""
from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError

_PACK = hiredis.pack_command


class Batch:
    """One write's commands on the lane: how many replies it still waits for, those in so far, and by when (a
    ``submit``'s deadline on the loop's clock; a ``run`` is bounded by its caller). Each kind of batch is a
    subclass whose ``done`` gets the replies in order, or the exception that lost the connection: one object
    per batch (a separate record and a callback were two, ``bench/results/2026-12-07-host-state-cost-3.md``).
    The lane sets the fields when the batch is queued."""

    __slots__ = ("deadline", "left", "replies")
    deadline: float
    left: int
    replies: list[Any]

    def done(self, result: list[Any] | BaseException) -> None:
        raise NotImplementedError


class _Awaited(Batch):
    """A ``run``'s batch: its caller awaits ``future``."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[list[Any]]) -> None:
        self.future = future

    def done(self, result: list[Any] | BaseException) -> None:
        future = self.future
        if future.done():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class _Protocol(asyncio.Protocol):
    def __init__(self, transport: asyncio.WriteTransport, opener: AbstractConnection) -> None:
        self.transport = transport
        # The redis-py connection that opened the transport, kept while it is ours: it (and its StreamWriter)
        # would close the transport when garbage-collected.
        self.opener = opener
        self.reader = hiredis.Reader()
        self.waiting: deque[Batch] = deque()
        self.out: list[bytes] = []  # the batches of this loop pass, written together at its end
        self.closed = False
        self.watchdog: asyncio.TimerHandle | None = None  # due at the oldest submitted batch's deadline

    def queue(self, data: bytes) -> None:
        if not self.out:
            asyncio.get_running_loop().call_soon(self.write_out)
        self.out.append(data)

    def write_out(self) -> None:
        out, self.out = self.out, []
        if out and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def watch(self, deadline: float) -> None:
        """Bound a submitted batch: one timer for the lane, not one made and cancelled per batch
        (``bench/results/2026-12-07-host-state-cost-2.md``). Armed for the oldest deadline; when due it
        abandons the connection if a batch is past its deadline, else it is armed again for the oldest still
        waiting. Batches answered in time cost it nothing."""
        if self.watchdog is None:
            self.watchdog = asyncio.get_running_loop().call_at(deadline, self.check)

    def check(self) -> None:
        self.watchdog = None
        if self.closed:
            return
        now = asyncio.get_running_loop().time()
        soonest = math.inf
        for batch in self.waiting:
            if batch.deadline <= now:
                self.abandon()
                return
            soonest = min(soonest, batch.deadline)
        if soonest != math.inf:
            self.watch(soonest)

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not waiting:  # a reply nobody asked for: out of step, trust nothing more
                self.close(RedisConnectionError("unexpected reply"))
                return
            batch = waiting[0]
            batch.replies.append(_error(reply) if isinstance(reply, hiredis.ReplyError) else reply)
            batch.left -= 1
            if not batch.left:
                waiting.popleft()
                batch.done(batch.replies)

    def abandon(self) -> None:
        """A batch's time ran out: its reply is still coming, so nothing behind it can be trusted."""
        self.close(TimeoutError("redis reply timed out"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(RedisConnectionError(f"connection lost: {exc!r}"))

    def close(self, exc: BaseException) -> None:
        if not self.closed:
            self.closed = True
            if self.watchdog is not None:
                self.watchdog.cancel()
                self.watchdog = None
            self.transport.close()
            self.opener._writer = self.opener._reader = None  # noqa: SLF001 - closed: nothing left to warn about
        while self.waiting:
            self.waiting.popleft().done(exc)


def pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """The commands in Redis's protocol, one buffer (hiredis: one C call per command; one command, the hot
    path's lookup or lone write, needs no join)."""
    try:
        if len(commands) == 1:
            one: bytes = _PACK(tuple(commands[0]))
            return one
        return b"".join([_PACK(c if isinstance(c, tuple) else tuple(c)) for c in commands])
    except TypeError as exc:  # an argument Redis cannot take (None, a bool): redis-py's DataError
        raise DataError(str(exc)) from exc


def _error(reply: hiredis.ReplyError) -> Exception:
    """Redis's error reply as redis-py's exception (``NoScriptError`` for ``NOSCRIPT``...)."""
    error: Exception = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return error


class Lane:
    """Batches of commands on one connection of ``pool``'s address, opened on first use."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._protocol: _Protocol | None = None
        self._opening: asyncio.Future[_Protocol] | None = None

    @property
    def ready(self) -> bool:
        """Connected: ``submit`` takes a batch now."""
        return self._protocol is not None and not self._protocol.closed

    def submit(self, commands: Sequence[tuple[Any, ...]], batch: Batch, deadline: float,
               write: bool = False) -> bool:
        """Queue ``commands`` as one batch in this loop pass's write on the open connection; ``batch.done``
        gets their replies (or the connection's failure; ``DataError`` at once for an argument Redis cannot
        take). No task, no future: the hot path's awaited commands and deferred writes settle from
        ``data_received``. A reply not there by ``deadline`` (the loop's clock) abandons the connection, which
        fails the batch and every batch behind it, as a cancelled ``run`` does. False, with nothing queued,
        when no connection is open (``run`` opens one). ``write``: the caller ends its pass's batches
        (``GuardedRedis._send_pass``): this one and those queued before it are written now, not a loop turn
        later (``bench/results/2026-12-07-host-state-cost-3.md``)."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            return False
        try:  # ``pack``, inline: a call less per batch
            data = _PACK(commands[0]) if len(commands) == 1 else b"".join([_PACK(c) for c in commands])
        except TypeError as exc:  # an argument Redis cannot take (None, a bool): redis-py's DataError
            raise DataError(str(exc)) from exc
        batch.left, batch.replies, batch.deadline = len(commands), [], deadline
        protocol.waiting.append(batch)
        if protocol.watchdog is None:
            protocol.watch(deadline)
        out = protocol.out  # ``queue``, inline
        if not write:
            if not out:
                asyncio.get_running_loop().call_soon(protocol.write_out)
            out.append(data)
            return True
        if out:  # the write already due at the pass's end finds nothing left
            out.append(data)
            data, protocol.out = b"".join(out), []
        try:
            protocol.transport.write(data)
        except RuntimeError as exc:  # uvloop: a transport a dying Redis just closed. Its batches fail once
            # the caller has counted this one in (a loop turn on), as when ``write_out`` met it
            lost = RedisConnectionError(f"write refused: {exc}")
            asyncio.get_running_loop().call_soon(protocol.close, lost)
        return True

    async def run(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in one write; their replies in order (a refused command's: its exception)."""
        return await self._send(commands)

    async def _send(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        if not commands:
            return []
        data = pack(commands)
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._open()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        batch = _Awaited(future)
        batch.left, batch.replies, batch.deadline = len(commands), [], math.inf
        protocol.waiting.append(batch)
        protocol.queue(data)
        try:
            return await future
        except BaseException as exc:  # cancelled or timed out: the connection's replies are out of step
            protocol.close(exc if isinstance(exc, Exception) else RedisConnectionError("batch abandoned"))
            raise

    async def _open(self) -> _Protocol:
        """One connection at a time: concurrent first batches share its opening."""
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._connect())
        opening = self._opening
        try:
            return await asyncio.shield(opening)
        finally:
            if opening.done():
                self._opening = None

    async def _connect(self) -> _Protocol:
        conn: AbstractConnection = self.pool.make_connection()  # type: ignore[no-untyped-call]
        await conn.connect()  # type: ignore[no-untyped-call]  # redis-py's handshake: AUTH, SELECT, TLS
        writer = conn._writer  # noqa: SLF001 - the transport is taken over once the handshake is done
        if writer is None:
            raise RedisConnectionError("no transport after connect")
        transport = writer.transport
        protocol = _Protocol(transport, conn)
        transport.set_protocol(protocol)
        self._protocol = protocol
        return protocol

    async def load_scripts(self, scripts: Iterable[Any]) -> None:
        """``load`` each distinct source of ``scripts`` (registered redis-py scripts; None: none)."""
        for source in {script.script for script in scripts if script is not None}:
            await self.load(source)

    async def load(self, source: str) -> None:
        """``SCRIPT LOAD`` (a script Redis lost: restart, ``SCRIPT FLUSH``)."""
        reply = (await self._send([("SCRIPT", "LOAD", source)]))[0]
        if isinstance(reply, Exception):
            raise reply

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close(RedisConnectionError("lane closed"))
            self._protocol = None
