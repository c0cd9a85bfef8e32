"""A flight's subscriber: leaves the flight once however its body ends, and touches nobody else."""
from __future__ import annotations

import asyncio

import pytest

from gateway.exchange import UpstreamResponse
from policies.cache.flight_reader import Reader
from policies.cache.singleflight import Flights
from tests.policies.cache.flight_support import Upstream, exchange
from tests.support.until import until


async def test_a_subscriber_cancelled_while_it_waits_leaves_the_flight() -> None:
    """A reader's task cancelled while it waits for the next chunk leaves at once (the last one to
    leave frees the upstream); a reader still waiting beside it is not touched and reads on."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    flight.join()
    up.queue.put_nowait(b"a")
    first, second = await flight.wait(leader=True), await flight.wait(leader=False)

    async def read_two(resp: UpstreamResponse) -> list[bytes]:
        return [await resp.body.__anext__(), await resp.body.__anext__()]

    cancelled, kept = asyncio.create_task(read_two(first)), asyncio.create_task(read_two(second))
    await until(lambda: len(flight._changed or ()) == 2)  # both wait for the second chunk
    cancelled.cancel()
    await until(lambda: flight.subscribers == 1)
    assert not up.closed  # control: the other subscriber still holds the call
    up.queue.put_nowait(b"b")
    assert await kept == [b"a", b"b"]
    with pytest.raises(StopAsyncIteration):
        await first.body.__anext__()  # a reader that left reads nothing more
    waiting = asyncio.create_task(read_two(second))
    await until(lambda: len(flight._changed or ()) == 1)
    waiting.cancel()
    await until(lambda: up.closed)  # the last subscriber gone: the upstream call is cancelled
    assert flight.subscribers == 0 and flights.get("k") is None


async def test_a_body_closed_under_a_waiting_read_ends_that_read() -> None:
    """``aclose`` while another task waits for the next chunk: that read ends (it does not hang) and the
    subscriber leaves; a read that is not closed under gets its chunk (the control)."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    flight.join()
    closed, kept = await flight.wait(leader=True), await flight.wait(leader=False)

    async def next_chunk(resp: UpstreamResponse) -> bytes:
        return await resp.body.__anext__()

    waiting, control = asyncio.create_task(next_chunk(closed)), asyncio.create_task(next_chunk(kept))
    await until(lambda: len(flight._changed or ()) == 2)
    await closed.body.aclose()
    with pytest.raises(StopAsyncIteration):
        await waiting
    assert flight.subscribers == 1 and not up.closed
    up.queue.put_nowait(b"a")
    assert await control == b"a"


async def test_a_reader_leaves_its_flight_once_however_often_it_is_ended() -> None:
    """``end`` and ``aclose`` after it: the subscriber count drops by one (the first end is the control),
    and the other subscriber's reads are untouched."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    flight.join()
    first, second = await flight.wait(leader=True), await flight.wait(leader=False)
    assert isinstance(first.body, Reader) and isinstance(second.body, Reader)
    assert flight.subscribers == 2
    first.body.end()
    assert flight.subscribers == 1  # control: ending leaves
    first.body.end()
    await first.body.aclose()
    assert flight.subscribers == 1 and not up.closed
    up.queue.put_nowait(b"a")
    assert await second.body.__anext__() == b"a"
    with pytest.raises(StopAsyncIteration):
        await first.body.__anext__()
