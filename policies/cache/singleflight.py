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
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from typing import Any

from gateway.body import Observed, as_body
from gateway.errors import UpstreamFailure
from gateway.exchange import Exchange, Source, UpstreamResponse

Call = Callable[[Exchange], Awaitable[UpstreamResponse]]


class TakeOver(Exception):
    """The leader failed before a response: start over (and maybe lead)."""


class Flight:
    def __init__(self, registry: Flights, key: Hashable) -> None:
        self.registry = registry
        self.key = key
        self.chunks: list[bytes] = []
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self.upstream = ""
        self.source: Source = "upstream"
        self.done = False
        self.error: BaseException | None = None
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()
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
        try:
            async for chunk in resp.body:
                self.chunks.append(chunk)
                self._wake()
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
        self.registry.remove(self)

    def _wake(self) -> None:
        self._changed.set()
        self._changed.clear()

    def _ended(self) -> None:
        if self.error is not None or self._drained or self.subscribers == 0:
            self.registry.remove(self)

    # --- subscriber side ---------------------------------------------------------
    def join(self) -> None:
        self.subscribers += 1

    def leave(self) -> None:
        self.subscribers -= 1
        if self.subscribers <= 0:
            if self.task is not None and not self.task.done():
                self.task.cancel()  # nobody listens any more: free the upstream
            self.registry.remove(self)

    def claim_store(self) -> bool:
        """True for the first subscriber that finished the whole answer: it fills the cache."""
        if self._stored:
            return False
        self._stored = True
        return True

    async def wait(self, leader: bool) -> UpstreamResponse:
        """The shared response, once the pump has one; raises ``TakeOver`` for a waiter after a failure."""
        try:
            await asyncio.shield(self.ready)
        except TakeOver:
            if leader and self.error is not None:
                if isinstance(self.error, asyncio.CancelledError):
                    raise UpstreamFailure("reset_before_response", "The upstream call was cancelled.",
                                          upstream=self.upstream) from None
                raise self.error from None
            raise
        # leave() runs once however the body ends, even when it is closed before it was read
        body = Observed(as_body(self.follow()), on_end=lambda _error: self.leave())
        return UpstreamResponse(status=self.status, headers=self.headers, body=body,
                                source=self.source if leader else "cache", upstream=self.upstream)

    async def follow(self) -> AsyncIterator[bytes]:
        i = 0
        while True:
            if i < len(self.chunks):
                i += 1
                yield self.chunks[i - 1]
                continue
            if self.done:
                self._drained = True
                self.registry.remove(self)
                return
            if self.error is not None:
                raise _as_failure(self.error, self.upstream)
            await self._changed.wait()


class Flights:
    """The flights in progress of one process, by key."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: Hashable) -> Flight | None:
        return self._flights.get(key)

    def lead(self, key: Hashable, ex: Exchange, call: Call) -> Flight:
        flight = Flight(self, key)
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


async def _quiet(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001, S110 - the body already failed or ended; its outcome is recorded
        pass
