"""Single flight: identical requests in flight share one upstream call.

The first request for a key (the leader) makes the call, up to the commit point's first token, in
its own task. Once the response is there, a flight with several subscribers has a *pump* task that
reads the upstream body into a shared, append-only list of chunks; every subscriber, the leader
included, reads that list at its own pace: a slow subscriber never slows the pump or anybody else, and
a subscriber that goes away (client disconnect) only unsubscribes; the pump is cancelled when the last
subscriber leaves, which closes the upstream connection.

Issue 21: the call used to run in the pump task too, which cost every request two loop turns on its
way to the first token (the task's start before the request left, and the leader's wake-up after the
first token came); under concurrency a loop turn is every other stream's work of that turn. A leader
whose client leaves during its call while others wait for it is not cancelled then: the server hands
that cancel to ``ex.guard`` (``gateway.exchange.DisconnectGuard``) and it is delivered once the call is
over, so a cancelled first request still costs the others neither their answer nor a second upstream
call. (Only a drain that ran out of time cancels such a leader at once: its waiters then take over.)

A flight with one subscriber when its response arrives (every flight that coalesces nothing) has
no pump for its body: that subscriber reads the upstream body itself, in its own task, still
appending to the shared list (the pump cost a task wake-up per chunk, ~60 us of CPU per
20-chunk stream). A second subscriber makes the pump: at once when the reader is between
reads, else when its read ends (the newcomer waits for that). The one exception to the rule above:
a direct reader cancelled during the very read a newcomer waits on took the upstream body with it
(asyncio cancels the read it awaits); that newcomer has been handed nothing yet and starts over
("one waiter takes over"): a second upstream call, never a lost answer.

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
from collections.abc import Awaitable, Callable, Hashable, Mapping

from gateway.body import Body, BodyClosed, EndCallback, close_quietly
from gateway.errors import UpstreamFailure
from gateway.exchange import DisconnectGuard, Exchange, Source, UpstreamResponse
from policies.cache.flight_reader import Reader
from policies.cache.waiters import release, wait_on

Call = Callable[[Exchange], Awaitable[UpstreamResponse]]


DEFAULT_MAX_BYTES = 256 * 1024


class TakeOver(Exception):
    """The leader failed before a response: start over (and maybe lead)."""


_PENDING, _READY, _FAILED = 0, 1, 2  # a flight's response: awaited, here, or the call failed before it


class Flight:
    __slots__ = ("__weakref__", "_call", "_changed", "_drained", "_handoff", "_readers", "_room", "_stored",
                 "_waiters", "body", "broken", "buffered", "chunks", "detached", "direct", "done", "error",
                 "first", "headers", "key", "loop", "max_bytes", "on_body_end", "reading", "registry",
                 "response", "source", "status", "subscribers", "task", "upstream")

    def __init__(self, registry: Flights, key: Hashable, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.registry = registry
        self.key = key
        self.max_bytes = max_bytes
        self.loop = asyncio.get_running_loop()
        self.chunks: list[bytes] = []
        self.first = 0  # absolute index of chunks[0] (earlier ones were read by everybody and dropped)
        self.buffered = 0  # bytes in chunks
        self.detached = False  # over max_bytes once: no new subscribers
        self._readers: list[Reader] = []
        # The wait lists below are made when somebody first waits and let go once released (None): an idle
        # stream's flight holds none of them (issue 21).
        self._room: list[asyncio.Future[None]] | None = None  # the pump waiting for room
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self.upstream = ""
        self.source: Source = "upstream"
        self.done = False
        self.error: BaseException | None = None
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None
        self.response = _PENDING
        self._waiters: list[asyncio.Future[None]] | None = None  # one per subscriber waiting for the response
        self._changed: list[Reader] | None = None  # subscribers waiting for a chunk or the end
        self._stored = False
        self._drained = False
        self.body: Body | None = None  # the upstream body while its one subscriber reads it (no pump)
        self.direct: Reader | None = None  # that subscriber's reader
        self.reading = False  # the direct reader is inside a read of ``body``
        self.broken = False  # that read was cancelled: the body went with it
        self._handoff: list[asyncio.Future[None]] | None = None  # newcomers waiting for the direct read
        self._call: tuple[Exchange, Call] | None = None  # the leader's call, until the leader makes it
        # Told once when the upstream body ends, as an ``Observed`` wrapper's ``on_end`` would be (None at its
        # clean end, the failure, ``BodyClosed`` when closed before its end), without a wrapper's frame and
        # exception per chunk: the fleet leader's claim release (``fleet_flight``).
        self.on_body_end: EndCallback | None = None

    # --- leader side -------------------------------------------------------------
    async def lead(self) -> None:
        """The call, in the leader's own task: no task to start (a loop turn before the request leaves)
        and none to wake the leader from (a loop turn before its first token), issue 21. While others
        wait for it, the leader's client leaving does not cut it (``ex.guard``: the server delivers that
        cancel once the call is over), so followers lose neither their answer nor a second call."""
        assert self._call is not None
        ex, call = self._call
        self._call = None
        guard = ex.guard = DisconnectGuard(self._shared)
        try:
            resp = await call(ex)
        except BaseException as exc:
            self._fail_before(exc)
            raise
        finally:
            ex.guard = None
            guard.release()
        del ex, call
        self._got(resp)

    def lead_with(self, ex: Exchange, call: Call) -> None:
        """The leader's call, instead of the one given to ``Flights.lead`` (before the leader makes it): one
        that needs the flight (``fleet_flight``: its body's end)."""
        if self._call is not None:
            self._call = (ex, call)

    def abandon(self, exc: BaseException) -> None:
        """The leader's set-up raised before its call (``coalesce_layer``): the flight leaves the registry
        with that failure, as after a call that failed before a response, and its leader leaves it; nobody
        is left waiting for a call that will never be made."""
        self._call = None
        self._fail_before(exc)
        self.leave()

    def _shared(self) -> bool:
        return self.subscribers > 1

    def _got(self, resp: UpstreamResponse) -> None:
        """The response: read by its one subscriber itself, or by a pump task for several."""
        self.status, self.headers = resp.status, resp.headers
        self.upstream, self.source = resp.upstream, resp.source
        self.response = _READY
        if self.subscribers == 1:  # nobody to share with: its subscriber reads the body itself
            self.body = resp.body
        else:
            self.task = self.loop.create_task(self._read(resp.body))
        if self._waiters:  # the wait lists below are released with a call only when somebody waits (issue 21)
            release(self._waiters)
        self._waiters = None

    # --- pump side ---------------------------------------------------------------

    async def _read(self, body: Body) -> None:
        """Read ``body`` into the shared list (the pump's loop), waiting for room past the byte bound."""
        try:
            async for chunk in body:
                self.chunks.append(chunk)
                self.buffered += len(chunk)
                self._wake()
                if self.buffered > self.max_bytes:
                    await self._wait_for_room()
        except BaseException as exc:
            self.error = exc
            self._body_end(exc)
            self._wake()
            self._ended()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        else:
            self._body_end(None)
        finally:
            await close_quietly(body)
        self.done = True
        self._wake()
        self._ended()

    def _body_end(self, error: BaseException | None) -> None:
        hook, self.on_body_end = self.on_body_end, None
        if hook is not None:
            hook(error)

    def _to_pump(self) -> None:
        """A second subscriber: the pump reads the body on from here; the direct reader is one of many."""
        body, self.body, self.direct = self.body, None, None
        assert body is not None
        self.task = self.loop.create_task(self._read(body))

    def _fail_before(self, exc: BaseException) -> None:
        self.error = exc
        self.response = _FAILED
        release(self._waiters)
        self._waiters = None
        self.registry.remove(self)

    async def _wait_for_room(self) -> None:
        """Over the byte bound: stop taking subscribers; read on once the slowest one freed room."""
        self._detach()
        self.trim()
        while self.buffered > self.max_bytes and self.subscribers > 0:
            self._room = self._room if self._room is not None else []
            await wait_on(self._room)

    def _detach(self) -> None:
        if not self.detached:
            self.detached = True
            self.registry.over_bytes += 1
            self.registry.remove(self)
            self.registry.detached.add(self)

    def trim(self) -> None:
        """Drop the chunks every subscriber has read (none while a subscriber has no reader yet)."""
        if self.subscribers > len(self._readers) or not self.chunks:
            return
        low = min((r.pos for r in self._readers), default=self.first + len(self.chunks))
        n = low - self.first
        if n > 0:
            self.buffered -= sum(len(c) for c in self.chunks[:n])
            del self.chunks[:n]
            self.first = low
        if self.buffered <= self.max_bytes:
            release(self._room)
            self._room = None

    def _wake(self) -> None:
        if self._changed:
            waiting, self._changed = self._changed, None
            for reader in waiting:
                if reader.waiter is not None and not reader.waiter.done():
                    self.serve(reader)

    def _ended(self) -> None:
        if self.error is not None or self._drained or self.subscribers == 0:
            self.registry.remove(self)

    # --- subscriber side ---------------------------------------------------------
    def join(self) -> None:
        self.subscribers += 1
        if self.body is not None and not self.reading:
            self._to_pump()  # no longer alone: share the body (during a direct read: when it ends, ``wait``)

    def leave(self, reader: Reader | None = None) -> None:
        self.subscribers -= 1
        if reader is not None and reader in self._readers:
            self._readers.remove(reader)
        if self.subscribers <= 0:
            if self.task is not None and not self.task.done():
                self.task.cancel()  # nobody listens any more: free the upstream
            self.registry.remove(self)
            self.chunks, self.buffered = [], 0
            if self._room:
                release(self._room)
            self._room = None
            if self.body is not None and not self.reading:  # left before reading it: close it
                body, self.body, self.direct = self.body, None, None
                self._body_end(BodyClosed())
                self.task = self.loop.create_task(close_quietly(body))
        elif self.detached:
            self.trim()

    def claim_store(self) -> bool:
        """True for the first subscriber that finished the whole answer: it fills the cache."""
        if self._stored:
            return False
        self._stored = True
        return True

    async def wait(self, leader: bool) -> UpstreamResponse:
        """The shared response, once the pump has one; raises ``TakeOver`` for a waiter after a failure."""
        if self.response == _PENDING:
            if leader and self._call is not None:
                await self.lead()  # raises the call's error (the waiters take over)
            else:
                # a future of one's own: a cancelled waiter cancels only that, never anybody else's wait
                self._waiters = self._waiters if self._waiters is not None else []
                await wait_on(self._waiters)
        if self.response == _FAILED:
            if leader and self.error is not None:
                if isinstance(self.error, asyncio.CancelledError):
                    raise UpstreamFailure("reset_before_response", "The upstream call was cancelled.",
                                          upstream=self.upstream) from None
                raise self.error from None
            raise TakeOver
        if self.reading:  # the body's one reader is inside a read: the pump takes over once it ends
            self._handoff = self._handoff if self._handoff is not None else []
            await wait_on(self._handoff)
            if self.broken:  # that read was cancelled, with the body: nothing was handed out yet
                raise TakeOver
        # the reader leaves the flight once however its body ends, even when it is closed unread
        reader = Reader(self, self.first)
        self._readers.append(reader)
        if self.body is not None:  # the only subscriber: it reads the upstream body itself
            assert self.direct is None and not self.chunks  # a direct reader reads from the body's start
            self.direct = reader
        return UpstreamResponse(status=self.status, headers=self.headers, body=reader,
                                source=self.source if leader else "cache", upstream=self.upstream)

    async def pull(self, reader: Reader) -> bytes:
        """The direct reader's next chunk, read from the upstream body in its own task (no pump)."""
        body = self.body
        assert body is not None
        self.reading = True
        try:
            chunk = await body.__anext__()
        except StopAsyncIteration:
            self.reading = False
            self._direct_end(reader, None)  # ended on its own: nothing to close (no coroutine to await)
            raise
        except BaseException as exc:
            self.reading = False
            self._direct_end(reader, exc)
            await close_quietly(body)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _as_failure(exc, self.upstream) from exc
        self.reading = False
        if reader.flight is None and not self._handoff:  # closed under this read, and nobody else wants it
            await self._drop_body()
            raise StopAsyncIteration
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        if self.buffered > self.max_bytes:
            self._detach()  # its one reader has read it all: ``trim`` lets it go as it reads on
        if self._handoff:  # newcomers waited for this read: the pump reads on, for everybody
            self._to_pump()
            release(self._handoff)
            self._handoff = None
        if reader.flight is None:
            raise StopAsyncIteration
        reader.held = True
        return chunk

    def _direct_end(self, reader: Reader, exc: BaseException | None) -> None:
        """The direct read ended the body: its end (``exc`` None), a failure, or its task cancelled (the body
        with it). The caller closes the body after a failure; a body that ended on its own needs no close."""
        self.body, self.direct = None, None
        if self.on_body_end is not None:
            self._body_end(exc)
        if exc is None:
            self.done = self._drained = True
        elif isinstance(exc, asyncio.CancelledError):
            self.broken = True
        else:
            self.error = exc
        self.registry.remove(self)
        if self._handoff:
            release(self._handoff)  # before leaving: the chunks stay for the newcomers
        self._handoff = None
        reader.end()

    def take_body(self, reader: Reader) -> Body | None:
        """The upstream body, for its direct reader to close when it leaves between reads."""
        if self.direct is not reader or self.reading:
            return None
        body, self.body, self.direct = self.body, None, None
        self._body_end(BodyClosed())
        return body

    async def _drop_body(self) -> None:
        body, self.body, self.direct = self.body, None, None
        if body is not None:
            self._body_end(BodyClosed())
            await close_quietly(body)

    def serve(self, reader: Reader) -> bool:
        """Settle ``reader``'s waiter with its next chunk or the end; False: it waits for the pump."""
        waiter, reader.waiter = reader.waiter, None
        assert waiter is not None
        i = reader.pos - self.first
        if i < len(self.chunks):
            reader.held = True
            waiter.set_result(self.chunks[i])
            return True
        if self.done:
            self._drained = True
            self.registry.remove(self)
            reader.end()
            waiter.set_exception(StopAsyncIteration())
            return True
        if self.error is not None:
            reader.end()
            waiter.set_exception(_as_failure(self.error, self.upstream))
            return True
        reader.waiter = waiter
        if self._changed is None:
            self._changed = [reader]
        else:
            self._changed.append(reader)
        return False


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
        """A new flight, its call made by the leader's ``wait(leader=True)``."""
        flight = Flight(self, key, max_bytes)
        self._flights[key] = flight
        flight.join()
        flight._call = (ex, call)
        return flight

    def remove(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]


def _as_failure(exc: BaseException, upstream: str) -> UpstreamFailure:
    if isinstance(exc, UpstreamFailure):
        return UpstreamFailure(exc.kind, exc.message, upstream=exc.upstream, committed=True)
    return UpstreamFailure("reset_mid_stream", "The shared upstream answer failed mid-way.",
                           upstream=upstream, committed=True)
