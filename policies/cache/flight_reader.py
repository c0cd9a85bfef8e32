"""A single flight's subscriber: its body, read from the flight's shared chunks at its own pace."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from gateway.body import close_quietly

if TYPE_CHECKING:
    from policies.cache.singleflight import Flight


class Reader:
    """One subscriber's body: the flight's chunks from the first, at its own pace.

    No generator and no wrapper per subscriber: ``__anext__`` hands out a future, done at once when
    the next chunk is there, else completed by the pump (what an idle stream holds is that future).
    A subscriber leaves the flight once, however its body ends: the end, a failure, ``aclose``, or its
    task cancelled while it waited (as a generator's ``Observed`` wrapper did).
    """

    __slots__ = ("flight", "held", "pos", "waiter")

    def __init__(self, flight: Flight, pos: int) -> None:
        self.flight: Flight | None = flight  # None once ended
        self.pos = pos  # absolute index of the next chunk this subscriber reads
        self.held = False  # the chunk at ``pos`` was handed out: read once the next one is asked for
        self.waiter: asyncio.Future[bytes] | None = None

    def __aiter__(self) -> Reader:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        flight = self.flight
        if flight is None:
            raise StopAsyncIteration
        if self.held:
            self.held = False
            self.pos += 1  # read: may be let go once every subscriber has read it
            if flight.detached:
                flight.trim()
        if flight.direct is self:
            return flight.pull(self)
        waiter: asyncio.Future[bytes] = flight.loop.create_future()
        self.waiter = waiter
        if not flight.serve(self):
            waiter.add_done_callback(self._gone)
        return waiter

    def _gone(self, waiter: asyncio.Future[bytes]) -> None:
        if waiter.cancelled():
            self.end()

    def end(self) -> None:
        """Leave the flight (once); a read still waiting (the body closed under it) ends with the body."""
        flight, waiter, self.flight, self.waiter = self.flight, self.waiter, None, None
        if flight is not None:
            flight.leave(self)
        if waiter is not None and not waiter.done():
            waiter.set_exception(StopAsyncIteration())

    async def aclose(self) -> None:
        body = self.flight.take_body(self) if self.flight is not None else None
        self.end()
        if body is not None:
            await close_quietly(body)
