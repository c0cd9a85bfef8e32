"""Flights: one call shared by every subscriber, each reading at its own pace, failures never look
complete."""
from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from gateway.body import BodyClosed
from gateway.errors import UpstreamFailure
from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.singleflight import Flight, Flights, TakeOver
from tests.policies.cache.flight_support import Upstream, exchange, read_all
from tests.support.until import until


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


async def test_a_flight_holds_at_most_max_bytes_unread_and_frees_them_when_clients_leave() -> None:
    """Past ``max_bytes`` the flight takes no new subscribers and reads on only as its slowest
    reader frees room; a subscriber that leaves returns the memory."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up, max_bytes=10)
    flight.join()  # two subscribers when the response comes: the pump reads for both
    for _ in range(6):
        up.queue.put_nowait(b"x" * 4)
    resp, other = await flight.wait(leader=True), await flight.wait(leader=False)  # neither reads yet
    await until(lambda: flight.detached)
    assert flight.buffered == 12 and up.queue.qsize() == 3  # stopped after 12 bytes > 10, not 24
    assert flights.get("k") is None  # a new identical request would start its own flight
    reader = resp.body.__aiter__()
    assert await reader.__anext__() == b"xxxx"
    assert await reader.__anext__() == b"xxxx"  # the first chunk is read by one of two: still held
    assert flight.buffered == 12 and up.queue.qsize() == 3
    await other.body.aclose()  # control: the other subscriber leaves, the first chunk is let go
    await until(lambda: up.queue.qsize() == 2)  # one chunk let go -> one more taken upstream
    assert flight.buffered <= 12 and flights.held_bytes() == flight.buffered
    await resp.body.aclose()  # the client leaves
    assert flights.held_bytes() == 0 and flight.chunks == []
    await until(lambda: up.closed)  # and the upstream call is cancelled


async def test_under_max_bytes_a_reader_that_waits_does_not_hold_the_flight() -> None:
    """Control: below the bound the pump reads the whole answer whatever the readers do."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up, max_bytes=100)
    flight.join()  # shared: a pump reads
    for chunk in (b"a" * 10, b"b" * 10, None):
        up.queue.put_nowait(chunk)
    resp = await flight.wait(leader=True)
    await until(lambda: flight.done)
    assert not flight.detached and flights.over_bytes == 0
    assert await read_all(resp) == b"a" * 10 + b"b" * 10


# --- one subscriber reads the upstream body itself (no pump) until a second one comes ---------------

async def test_a_lone_subscriber_reads_the_upstream_body_itself_at_its_own_pace() -> None:
    """No pump for the body of a flight nobody shares: the chunks are read when its subscriber asks."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    for chunk in (b"a", b"b", None):
        up.queue.put_nowait(chunk)
    resp = await flight.wait(leader=True)
    assert flight.task is None and flight.direct is not None  # no task: the leader called, it reads
    assert up.queue.qsize() == 3  # nothing read ahead of the reader...
    reader = resp.body.__aiter__()
    assert await reader.__anext__() == b"a"
    assert up.queue.qsize() == 2  # ...control: it reads as it is asked
    assert await read_all(resp) == b"b"
    assert up.calls == 1 and up.closed and len(flights) == 0


async def test_a_follower_joining_mid_stream_gets_every_chunk_from_the_first() -> None:
    """A follower that comes between two reads of the direct reader makes the pump: both read it all."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    up.queue.put_nowait(b"a")
    first = await flight.wait(leader=True)
    assert await first.body.__anext__() == b"a"
    assert flights.get("k") is flight
    flight.join()
    second = await flight.wait(leader=False)
    assert flight.direct is None and flight.task is not None and not flight.task.done()  # the pump reads on
    for chunk in (b"b", b"c", None):
        up.queue.put_nowait(chunk)
    assert (await read_all(second), await read_all(first)) == (b"abc", b"bc")
    assert up.calls == 1 and up.closed and len(flights) == 0


async def test_a_follower_joining_during_a_direct_read_waits_for_it_then_shares() -> None:
    """A follower that comes while the direct reader waits for a chunk gets its reader once that chunk is
    in; from there the pump reads for both."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    first = await flight.wait(leader=True)
    reading = asyncio.create_task(read_all(first))
    await until(lambda: flight.reading)

    async def follow() -> bytes:
        flight.join()
        return await read_all(await flight.wait(leader=False))

    follower = asyncio.create_task(follow())
    await until(lambda: len(flight._handoff or ()) == 1)
    for chunk in (b"a", b"b", None):
        up.queue.put_nowait(chunk)
    assert await follower == b"ab" and await reading == b"ab"
    assert up.calls == 1 and up.closed and len(flights) == 0


async def test_a_leader_cancelled_mid_stream_costs_its_followers_nothing() -> None:
    """The direct reader's client leaves after a follower joined: the follower reads the whole answer from
    the one call (control: a request for another key does make a call)."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    up.queue.put_nowait(b"a")
    first = await flight.wait(leader=True)
    assert await first.body.__anext__() == b"a"
    flight.join()
    second = await flight.wait(leader=False)
    leader = asyncio.create_task(read_all(first))
    await until(lambda: len(flight._changed or ()) == 1)  # the leader waits for the next chunk
    leader.cancel()
    await until(lambda: flight.subscribers == 1)
    for chunk in (b"b", None):
        up.queue.put_nowait(chunk)
    assert await read_all(second) == b"ab"
    assert up.calls == 1 and up.closed
    await flights.lead("other", exchange(), up).wait(leader=True)
    assert up.calls == 2  # control


async def direct_read_with_a_waiting_follower() -> tuple[
        Flights, Upstream, Flight, asyncio.Task[bytes], asyncio.Task[UpstreamResponse]]:
    """A flight's only subscriber inside a direct read of the body, and a newcomer waiting on that read."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    first = await flight.wait(leader=True)
    reader = asyncio.create_task(read_all(first))
    await until(lambda: flight.reading)
    flight.join()
    follower = asyncio.create_task(flight.wait(leader=False))
    await until(lambda: len(flight._handoff or ()) == 1)  # it waits on the read
    return flights, up, flight, reader, follower


async def test_a_direct_read_cancelled_under_a_waiting_follower_makes_it_start_over() -> None:
    """The one case a cancelled leader costs a second call: its task is cancelled inside the read a
    follower waits on, so the body goes with it. The follower was handed nothing: it takes over (never a
    partial answer); the body is closed and the flight gone."""
    flights, up, flight, leader, follower = await direct_read_with_a_waiting_follower()
    leader.cancel()
    with pytest.raises(TakeOver):
        await follower
    assert up.closed and flights.get("k") is None and flight.broken


async def test_a_direct_reader_holds_at_most_max_bytes_and_detaches() -> None:
    """The byte bound with no pump: past it the flight takes no new subscriber and keeps only what its
    reader has not read (the chunk in hand); the whole answer still arrives."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up, max_bytes=10)
    for chunk in [b"x" * 4] * 6 + [None]:
        up.queue.put_nowait(chunk)
    resp = await flight.wait(leader=True)
    reader = resp.body.__aiter__()
    got = [await reader.__anext__() for _ in range(2)]
    assert not flight.detached and flights.get("k") is flight  # control: under the bound, still joinable
    got.append(await reader.__anext__())
    assert flight.detached and flights.get("k") is None and flights.over_bytes == 1
    held = []
    async for chunk in reader:
        got.append(chunk)
        held.append(flights.held_bytes())
    assert b"".join(got) == b"x" * 24 and max(held) == 4 and flights.held_bytes() == 0


@pytest.mark.parametrize("fail_at", [0, 1])
async def test_a_direct_reader_and_its_waiting_follower_see_a_failure_as_a_failure(fail_at: int) -> None:
    """The body fails before or after its first chunk while a follower waits on the direct read: both get
    the chunks before the failure, then ``UpstreamFailure`` (committed: never a complete-looking answer)."""
    flights, up = Flights(), Upstream(fail_at=fail_at)
    flight = flights.lead("k", exchange(), up)
    first = await flight.wait(leader=True)
    got: list[bytes] = []
    if fail_at:
        up.queue.put_nowait(b"a")
        got.append(await first.body.__anext__())
    leader = asyncio.create_task(read_into(first, got))
    await until(lambda: flight.reading)
    flight.join()
    follower_got: list[bytes] = []
    follower = asyncio.create_task(follow(flight, follower_got))
    await until(lambda: len(flight._handoff or ()) == 1)
    up.queue.put_nowait(b"b")
    for task in (leader, follower):
        with pytest.raises(UpstreamFailure) as failure:
            await task
        assert failure.value.committed
    assert got == follower_got == [b"a"][:fail_at]
    assert up.closed and flights.get("k") is None


async def read_into(resp: UpstreamResponse, into: list[bytes]) -> None:
    async for chunk in resp.body:
        into.append(chunk)


async def follow(flight: Flight, into: list[bytes]) -> None:
    await read_into(await flight.wait(leader=False), into)


async def test_a_follower_that_leaves_while_it_waits_on_a_direct_read_costs_the_reader_nothing() -> None:
    """A newcomer cancelled while it waits for the direct read to end only leaves; the reader gets the
    whole answer (the control: the newcomer was really waiting on that read)."""
    flights, up, flight, reading, follower = await direct_read_with_a_waiting_follower()
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower
    flight.leave()  # what the coalescing layer does for a subscriber whose wait failed
    for chunk in (b"a", b"b", None):
        up.queue.put_nowait(chunk)
    assert await reading == b"ab"
    assert up.calls == 1 and up.closed and flight.subscribers == 0 and len(flights) == 0


class CountingBody:
    """An upstream body that counts its ``aclose`` calls; it fails at ``fail_at`` if given."""

    def __init__(self, chunks: list[bytes], fail_at: int | None = None) -> None:
        self.chunks, self.fail_at, self.n, self.closes = chunks, fail_at, 0, 0

    def __aiter__(self) -> CountingBody:
        return self

    async def __anext__(self) -> bytes:
        await asyncio.sleep(0)  # a read that waits, as a socket's does
        if self.n == self.fail_at:
            raise UpstreamFailure("reset_mid_stream", "boom", committed=True)
        if self.n == len(self.chunks):
            raise StopAsyncIteration
        self.n += 1
        return self.chunks[self.n - 1]

    async def aclose(self) -> None:
        self.closes += 1


@pytest.mark.parametrize("fail_at", [None, 1])
async def test_a_direct_reader_closes_the_body_only_when_it_did_not_end_itself(fail_at: int | None) -> None:
    """A body read to its end needs no ``aclose`` (the flight skips that coroutine per request, issue 21);
    the control: a body that failed mid-way is closed once, and its reader gets the failure."""
    body = CountingBody([b"a", b"b"], fail_at)

    async def call(ex: Exchange) -> UpstreamResponse:
        return UpstreamResponse(200, {}, body)

    flights = Flights()
    resp = await flights.lead("k", exchange(), call).wait(leader=True)
    if fail_at is None:
        assert await read_all(resp) == b"ab"
        await resp.body.aclose()  # what the handler does after the end: nothing left to close
        assert body.closes == 0
    else:
        with pytest.raises(UpstreamFailure) as failure:
            await read_all(resp)
        assert failure.value.committed and body.closes == 1
    assert len(flights) == 0 and flights.held_bytes() == 0


async def test_a_lone_subscribers_flight_holds_no_task_nor_wait_lists() -> None:
    """Issue 21: an idle stream's flight keeps no task (the leader made the call in its own) nor empty
    wait lists; control: a shared flight's pump task, which reads on, is kept."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    up.queue.put_nowait(b"a")
    first = await flight.wait(leader=True)
    assert await first.body.__anext__() == b"a"
    assert flight.task is None
    assert (flight._waiters, flight._room, flight._changed, flight._handoff) == (None,) * 4  # no wait lists
    flight.join()
    second = await flight.wait(leader=False)
    reader = weakref.ref(flight.task) if flight.task is not None else None
    gc.collect()
    assert reader is not None and reader() is not None and not reader().done()  # control: kept while it reads
    up.queue.put_nowait(None)
    assert (await read_all(second), await read_all(first)) == (b"a", b"")


# --- the leader makes the call in its own task ---------------------------------------------------------

async def test_the_leader_calls_in_its_own_task_and_guards_it_while_others_wait() -> None:
    """No task for the call: it runs in the leader's task; its guard holds only while a follower waits,
    and a cancel handed to it then is delivered once the call is over (the followers have their answer)."""
    flights, up = Flights(), Upstream()
    ex = exchange()
    seen: list[tuple[asyncio.Task[object] | None, bool]] = []

    async def call(e: Exchange) -> UpstreamResponse:
        assert e.guard is not None
        seen.append((asyncio.current_task(), e.guard.holding()))
        flight.join()  # a follower comes during the call
        seen.append((asyncio.current_task(), e.guard.holding()))
        assert e.guard.defer(lambda: cancels.append("cancel"))  # the leader's client left: kept for later
        assert cancels == []
        return await up(e)

    cancels: list[str] = []
    flight = flights.lead("k", ex, call)
    leader = asyncio.create_task(flight.wait(leader=True))
    resp = await leader
    assert seen == [(leader, False), (leader, True)]  # control: alone, nothing held
    assert cancels == ["cancel"]  # delivered once the call was over
    assert ex.guard is None and up.calls == 1
    follower = await flight.wait(leader=False)
    up.queue.put_nowait(b"a")
    up.queue.put_nowait(None)
    assert (await read_all(follower), await read_all(resp)) == (b"a", b"a")


def _ends(flight: Flight) -> list[BaseException | None]:
    """What the flight's ``on_body_end`` is told."""
    told: list[BaseException | None] = []
    flight.on_body_end = told.append
    return told


async def test_the_body_end_is_told_once_as_a_wrapper_would_be_for_its_one_reader() -> None:
    """One subscriber reads the upstream body itself: its clean end is told None, once; a failure mid-body is
    told the failure; a body closed between reads, or left unread, is told ``BodyClosed``. Control: nothing is
    told while the body is still being read."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    told = _ends(flight)
    for chunk in (b"a", b"b", None):
        up.queue.put_nowait(chunk)
    resp = await flight.wait(leader=True)
    assert await resp.body.__anext__() == b"a" and told == []
    assert await read_all(resp) == b"b" and told == [None]
    await resp.body.aclose()  # type: ignore[attr-defined]
    assert told == [None]  # once

    failing = Upstream(fail_at=1)
    flight = flights.lead("f", exchange(), failing)
    told = _ends(flight)
    for chunk in (b"a", b"b", None):
        failing.queue.put_nowait(chunk)
    with pytest.raises(UpstreamFailure):
        await read_all(await flight.wait(leader=True))
    assert len(told) == 1 and isinstance(told[0], UpstreamFailure)

    for unread in (False, True):
        up = Upstream()
        flight = flights.lead("c", exchange(), up)
        told = _ends(flight)
        up.queue.put_nowait(b"a")
        resp = await flight.wait(leader=True)
        if not unread:
            assert await resp.body.__anext__() == b"a"
        await resp.body.aclose()  # type: ignore[attr-defined]
        assert len(told) == 1 and isinstance(told[0], BodyClosed)


async def test_the_body_end_is_told_by_the_pump_for_several_subscribers() -> None:
    """Two subscribers when the response comes: the pump reads the body, and its end is told once, None, when
    the last chunk is in (control: not before); a pump cancelled because everybody left is told that."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    flight.join()
    told = _ends(flight)
    up.queue.put_nowait(b"a")
    first, second = await flight.wait(leader=True), await flight.wait(leader=False)
    assert await first.body.__anext__() == b"a" and told == []
    up.queue.put_nowait(None)
    assert await read_all(first) == b"" and await read_all(second) == b"a" and told == [None]

    up = Upstream()
    flight = flights.lead("c", exchange(), up)
    flight.join()
    told = _ends(flight)
    up.queue.put_nowait(b"a")
    first, second = await flight.wait(leader=True), await flight.wait(leader=False)
    assert await first.body.__anext__() == b"a"
    await first.body.aclose()  # type: ignore[attr-defined]
    await second.body.aclose()  # type: ignore[attr-defined]
    await until(lambda: len(told) == 1, timeout=5, interval=0.001)
    assert isinstance(told[0], asyncio.CancelledError)


async def test_an_abandoned_flight_leaves_the_registry_and_its_waiters_take_over() -> None:
    """``abandon`` (the leader's set-up raised before its call): nothing calls, a waiter gets ``TakeOver``
    and the key is free for a new flight. Control: before it, the flight is registered, the waiter waits."""
    flights, up = Flights(), Upstream()
    flight = flights.lead("k", exchange(), up)
    flight.join()
    waiter = asyncio.create_task(flight.wait(leader=False))
    await until(lambda: bool(flight._waiters))
    assert flights.get("k") is flight and not waiter.done()
    flight.abandon(RuntimeError("set-up failed"))
    with pytest.raises(TakeOver):
        await waiter
    assert flights.get("k") is None and up.calls == 0 and flight.subscribers == 1  # the waiter's, left next
