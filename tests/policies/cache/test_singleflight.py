"""Flights: one call shared by every subscriber, each reading at its own pace, failures never look
complete."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.errors import UpstreamFailure
from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.singleflight import Flights, TakeOver
from tests.support.exchange import build_exchange
from tests.support.until import until


def exchange() -> Exchange:
    return build_exchange(request_id="r", method="POST", path="/", operation="chat",
                          headers=None,  # type: ignore[arg-type]
                    raw_body=b"", body={}, received_at=0, deadline=1e9)


class Upstream:
    """A controllable upstream: chunks are released by the test."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls = 0
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.fail_at = fail_at
        self.closed = False

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        self.calls += 1
        return UpstreamResponse(200, {}, self.body())

    async def body(self) -> AsyncIterator[bytes]:
        n = 0
        try:
            while (chunk := await self.queue.get()) is not None:
                if self.fail_at == n:
                    raise UpstreamFailure("reset_mid_stream", "boom", committed=True)
                n += 1
                yield chunk
        finally:
            self.closed = True


async def read_all(resp: UpstreamResponse) -> bytes:
    return b"".join([c async for c in resp.body])


async def test_followers_share_one_call_and_read_at_their_own_pace() -> None:
    """A follower that has not read yet does not hold the others up and still gets every chunk."""
    flights, up = Flights(), Upstream()
    leader = flights.lead("k", exchange(), up)
    follower = flights.get("k")
    assert follower is leader
    follower.join()
    for chunk in (b"a", b"b", b"c", None):
        up.queue.put_nowait(chunk)
    first = await leader.wait(leader=True)
    assert await read_all(first) == b"abc"  # finished while the second subscriber has not read anything
    second = await leader.wait(leader=False)
    assert second.source == "cache"
    assert await read_all(second) == b"abc"
    assert up.calls == 1 and len(flights) == 0


async def test_failure_mid_body_raises_for_everyone() -> None:
    """A body that fails after it started ends every subscriber's copy with UpstreamFailure."""
    flights, up = Flights(), Upstream(fail_at=1)
    flight = flights.lead("k", exchange(), up)
    flight.join()
    for chunk in (b"a", b"b", None):
        up.queue.put_nowait(chunk)
    for leader in (True, False):
        resp = await flight.wait(leader=leader)
        with pytest.raises(UpstreamFailure):
            await read_all(resp)


async def test_failure_before_response_takes_over() -> None:
    """The leader gets its error; a waiter gets TakeOver and can lead a new flight."""
    flights = Flights()

    async def broken(ex: Exchange) -> UpstreamResponse:
        raise UpstreamFailure("connect_error", "down")

    flight = flights.lead("k", exchange(), broken)
    flight.join()
    with pytest.raises(UpstreamFailure):
        await flight.wait(leader=True)
    with pytest.raises(TakeOver):
        await flight.wait(leader=False)
    assert flights.get("k") is None


async def test_last_subscriber_leaving_cancels_the_call() -> None:
    """When everybody has gone, the upstream body is closed."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    up.queue.put_nowait(b"a")
    resp = await flight.wait(leader=True)
    body = resp.body
    assert await body.__anext__() == b"a"
    await body.aclose()  # type: ignore[attr-defined]
    await until(lambda: up.closed, timeout=5, interval=0.001)
    assert flights.get("k") is None
