"""Single flight: identical requests in flight share one upstream call.

The first request for a key starts a *pump* task that calls the rest of the
chain and reads the upstream body into a shared, append-only list of chunks.
Every request for the key, the first included, is a subscriber that reads that
list at its own pace: a slow subscriber never slows the pump or anybody else,
and a subscriber that goes away (client disconnect) only unsubscribes; the pump
is cancelled when the last subscriber leaves, which closes the upstream
connection. So a cancelled first request does not cost the others their answer
nor a second upstream call.

Failure rules, so nobody is handed a partial answer as if it were complete:
- the call fails before a response (exception from the chain): the first
  request gets the error; the waiters start over, and the first of them becomes
  the new leader ("one waiter takes over");
- the body fails after it started: every subscriber raises ``UpstreamFailure``
  when it reaches that point (an SSE error event and no ``[DONE]``, or a cut
  body), exactly as the upstream failure itself would have ended it.

Bounded in bytes (issue 15: 60 unread 2 MB answers held +259 MB): a flight holds at most
``max_bytes`` of chunks not yet read by every subscriber. Past that it takes no new
subscribers (a new identical request makes its own flight) and the pump reads on only as the
slowest subscriber frees room: the upstream is read at the readers' pace, as without
coalescing, and chunks every subscriber has read are let go.
"""
from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from typing import Any

from gateway.body import Observed, as_body
from gateway.errors import UpstreamFailure
from gateway.exchange import Exchange, Source, UpstreamResponse

Call = Callable[[Exchange], Awaitable[UpstreamResponse]]


DEFAULT_MAX_BYTES = 256 * 1024


class TakeOver(Exception):
    """The leader failed before a response: start over (and maybe lead)."""


class _Cursor:
    __slots__ = ("pos",)

    def __init__(self, pos: int) -> None:
        self.pos = pos  # absolute index of the next chunk this subscriber reads


class Flight:
    def __init__(self, registry: Flights, key: Hashable, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.registry = registry
        self.key = key
        self.max_bytes = max_bytes
        self.chunks: list[bytes] = []
        self.first = 0  # absolute index of chunks[0] (earlier ones were read by everybody and dropped)
        self.buffered = 0  # bytes in chunks
        self.detached = False  # over max_bytes once: no new subscribers
        self._cursors: set[_Cursor] = set()
        self._room: list[asyncio.Future[None]] = []  # the pump waiting for room (futures made on demand)
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self.upstream = ""
        self.source: Source = "upstream"
        self.done = False
        self.error: BaseException | None = None
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters: list[asyncio.Future[None]] = []  # one per subscriber waiting for ``ready``
        self._changed: list[asyncio.Future[None]] = []  # subscribers waiting for a chunk or the end
        self._stored = False
        self._drained = False

    # --- pump side ---------------------------------------------------------------
    def start(self, ex: Exchange, call: Call) -> None:
        self.task = asyncio.get_running_loop().create_task(self._pump(ex, call))

    async def _pump(self, ex: Exchange, call: Call) -> None:
        try:
            resp = await call(ex)
        except BaseException as exc:
            self._fail_before(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self.status, self.headers = resp.status, resp.headers
        self.upstream, self.source = resp.upstream, resp.source
        self.ready.set_result(None)
        self._release_waiters()
        try:
            async for chunk in resp.body:
                self.chunks.append(chunk)
                self.buffered += len(chunk)
                self._wake()
                if self.buffered > self.max_bytes:
                    await self._wait_for_room()
        except BaseException as exc:
            self.error = exc
            self._wake()
            self._ended()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            await _quiet(resp.body.aclose())
        self.done = True
        self._wake()
        self._ended()

    def _fail_before(self, exc: BaseException) -> None:
        self.error = exc
        if not self.ready.done():
            self.ready.set_exception(TakeOver())
            self.ready.exception()  # mark retrieved: nobody may be waiting
            self._release_waiters()
        self.registry.remove(self)

    async def _wait_for_room(self) -> None:
        """Over the byte bound: stop taking subscribers; read on once the slowest one freed room."""
        if not self.detached:
            self.detached = True
            self.registry.over_bytes += 1
            self.registry.remove(self)
            self.registry.detached.add(self)
        self._trim()
        while self.buffered > self.max_bytes and self.subscribers > 0:
            await _wait_on(self._room)

    def _trim(self) -> None:
        """Drop the chunks every subscriber has read (none while a subscriber has no cursor yet)."""
        if self.subscribers > len(self._cursors) or not self.chunks:
            return
        low = min((c.pos for c in self._cursors), default=self.first + len(self.chunks))
        n = low - self.first
        if n > 0:
            self.buffered -= sum(len(c) for c in self.chunks[:n])
            del self.chunks[:n]
            self.first = low
        if self.buffered <= self.max_bytes:
            _release(self._room)

    def _wake(self) -> None:
        if self._changed:
            _release(self._changed)

    def _ended(self) -> None:
        if self.error is not None or self._drained or self.subscribers == 0:
            self.registry.remove(self)

    # --- subscriber side ---------------------------------------------------------
    def join(self) -> None:
        self.subscribers += 1

    def leave(self, cursor: _Cursor | None = None) -> None:
        self.subscribers -= 1
        self._cursors.discard(cursor)
        if self.subscribers <= 0:
            if self.task is not None and not self.task.done():
                self.task.cancel()  # nobody listens any more: free the upstream
            self.registry.remove(self)
            self.chunks, self.buffered = [], 0
            _release(self._room)
        elif self.detached:
            self._trim()

    def claim_store(self) -> bool:
        """True for the first subscriber that finished the whole answer: it fills the cache."""
        if self._stored:
            return False
        self._stored = True
        return True

    async def wait(self, leader: bool) -> UpstreamResponse:
        """The shared response, once the pump has one; raises ``TakeOver`` for a waiter after a failure."""
        try:
            await self._until_ready()
        except TakeOver:
            if leader and self.error is not None:
                if isinstance(self.error, asyncio.CancelledError):
                    raise UpstreamFailure("reset_before_response", "The upstream call was cancelled.",
                                          upstream=self.upstream) from None
                raise self.error from None
            raise
        # leave() runs once however the body ends, even when it is closed before it was read
        cursor = _Cursor(self.first)
        self._cursors.add(cursor)
        body = Observed(as_body(self.follow(cursor)), on_end=lambda _error: self.leave(cursor))
        return UpstreamResponse(status=self.status, headers=self.headers, body=body,
                                source=self.source if leader else "cache", upstream=self.upstream)

    async def _until_ready(self) -> None:
        """Wait for ``ready`` (raising its ``TakeOver``) with a future of one's own: a cancelled waiter
        cancels only that, never the shared one (what ``asyncio.shield`` did, at a third of its cost)."""
        if not self.ready.done():
            await _wait_on(self._waiters)
        self.ready.result()

    def _release_waiters(self) -> None:
        _release(self._waiters)

    async def follow(self, cursor: _Cursor | None = None) -> AsyncIterator[bytes]:
        cursor = cursor or _Cursor(self.first)
        while True:
            i = cursor.pos - self.first
            if i < len(self.chunks):
                chunk = self.chunks[i]
                yield chunk
                cursor.pos += 1  # read: may be let go once every subscriber has read it
                if self.detached:
                    self._trim()
                continue
            if self.done:
                self._drained = True
                self.registry.remove(self)
                return
            if self.error is not None:
                raise _as_failure(self.error, self.upstream)
            await _wait_on(self._changed)


class Flights:
    """The flights in progress of one process, by key."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, Flight] = {}
        self.over_bytes = 0  # flights that reached their byte bound (then read at the readers' pace)
        self.detached: weakref.WeakSet[Flight] = weakref.WeakSet()  # those still alive

    def held_bytes(self) -> int:
        """Bytes buffered by every live flight (for tests and the memory figures)."""
        return sum(f.buffered for f in [*self._flights.values(), *self.detached])

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: Hashable) -> Flight | None:
        return self._flights.get(key)

    def lead(self, key: Hashable, ex: Exchange, call: Call, max_bytes: int = DEFAULT_MAX_BYTES) -> Flight:
        flight = Flight(self, key, max_bytes)
        self._flights[key] = flight
        flight.join()
        flight.start(ex, call)
        return flight

    def remove(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]


def _as_failure(exc: BaseException, upstream: str) -> UpstreamFailure:
    if isinstance(exc, UpstreamFailure):
        return UpstreamFailure(exc.kind, exc.message, upstream=exc.upstream, committed=True)
    return UpstreamFailure("reset_mid_stream", "The shared upstream answer failed mid-way.",
                           upstream=upstream, committed=True)


async def _wait_on(waiters: list[asyncio.Future[None]]) -> None:
    """Wait until ``_release(waiters)``, with a future of one's own (cancelling it touches nobody else;
    cheaper than an ``asyncio.Event`` per flight when nobody ever waits)."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    await waiter


def _release(waiters: list[asyncio.Future[None]]) -> None:
    pending = waiters[:]
    waiters.clear()
    for waiter in pending:
        if not waiter.done():
            waiter.set_result(None)


async def _quiet(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001, S110 - the body already failed or ended; its outcome is recorded
        pass
