"""Coalescing across processes on a real Redis: a follower answers from the leader's entry; when the
leader's answer is not stored, it gives up within the grace and calls the provider itself."""
from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from gateway.body import OneChunk
from gateway.config_model import StateConfig
from gateway.exchange import Exchange, UpstreamResponse
from gateway.state.redis_client import GuardedRedis
from policies.cache.entry import CachedAnswer
from policies.cache.fleet_flight import (
    PRE_CLAIM,
    RELEASE_IF_MINE,
    RELEASE_TO_GRACE,
    FleetFlight,
    release_unused,
)
from policies.cache.keys import CacheKey
from policies.cache.memory_store import MemoryStore
from policies.cache.redis_store import ENTRY_MAGIC, LOOKUP_OR_CLAIM, AnswerStore, Claim
from policies.cache.singleflight import Flights
from tests.support.redis_trips import round_trips
from tests.support.servers import RedisServer
from tests.support.until import until

ANSWER = b'{"id":"x","object":"chat.completion","choices":[]}'


def process(url: str, prefix: str, decisions: list[str]) -> FleetFlight:
    redis = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=url, timeout_ms=5000),
                                     time.monotonic)
    store = AnswerStore("exact", MemoryStore(100, 10**6, time.monotonic), redis, prefix)
    return FleetFlight(redis, store, time.monotonic, decisions.append, poll_s=0.005)


class Provider:
    """A next() that counts calls and answers when ``release`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        self.calls += 1
        await self.release.wait()
        return UpstreamResponse(status=200, headers={"content-type": "application/json"},
                                body=OneChunk(ANSWER))


async def drain(resp: UpstreamResponse) -> bytes:
    return b"".join([chunk async for chunk in resp.body])


async def test_follower_answers_from_the_leaders_entry(redis_server: RedisServer,
                                                       make_exchange: Callable[..., Exchange]) -> None:
    prefix, key, decisions = f"f{secrets.token_hex(3)}:", CacheKey("t:team-a", "d1"), list[str]()
    a, b = process(redis_server.url, prefix, decisions), process(redis_server.url, prefix, decisions)
    pa, pb = Provider(), Provider()
    leader = asyncio.create_task(a.call(make_exchange(), pa, key, 5.0))
    await until(lambda: decisions == ["fleet_leader"])  # the leader's claim goes first
    ex_b = make_exchange()
    follower = asyncio.create_task(b.call(ex_b, pb, key, 5.0))
    pa.release.set()
    assert await drain(await leader) == ANSWER
    a.store.set(key, CachedAnswer(operation="chat", body=ANSWER, created=time.time()), 30)  # the exact cache
    resp = await follower
    assert await drain(resp) == ANSWER and ex_b.record.cache_result == "coalesced"
    assert (pa.calls, pb.calls) == (1, 0) and decisions == ["fleet_leader", "fleet_follower"]


async def test_follower_gives_up_when_nothing_is_stored(redis_server: RedisServer,
                                                        make_exchange: Callable[..., Exchange]) -> None:
    prefix, key, decisions = f"f{secrets.token_hex(3)}:", CacheKey("t:team-a", "d2"), list[str]()
    a, b = process(redis_server.url, prefix, decisions), process(redis_server.url, prefix, decisions)
    pa, pb = Provider(), Provider()
    pa.release.set()
    pb.release.set()
    resp = await a.call(make_exchange(), pa, key, 5.0)
    await drain(resp)  # the leader's answer ends; nothing is stored (say, cut by max_tokens)
    started = time.monotonic()
    await drain(await b.call(make_exchange(), pb, key, 5.0))
    assert pb.calls == 1 and decisions == ["fleet_leader", "fleet_gave_up"]
    assert time.monotonic() - started < 3.0  # within the grace, not the whole wait


async def test_a_claim_taken_by_the_lookup_is_used_not_taken_again(
        redis_server: RedisServer, make_exchange: Callable[..., Exchange]) -> None:
    """The exact cache's lookup took the claim: the leader makes no SET of its own (the key stays absent
    here, where a SET NX would have written it), and marks the claim used."""
    prefix, key, decisions = f"f{secrets.token_hex(3)}:", CacheKey("t:team-a", "d3"), list[str]()
    a = process(redis_server.url, prefix, decisions)
    pa = Provider()
    pa.release.set()
    ex = make_exchange()
    pre = Claim(a.store.claim_key(key), won=True, holder=None, of=key, life_ms=5000)
    ex.state.set(PRE_CLAIM, pre)
    await drain(await a.call(ex, pa, key, 5.0))
    await a.backend.drain()
    assert pa.calls == 1 and decisions == ["fleet_leader"] and pre.used
    assert await a.backend.client.exists(pre.key) == 0
    control = make_exchange()  # no claim from the lookup: the leader claims itself
    await drain(await a.call(control, pa, CacheKey("t:team-a", "d4"), 5.0))
    assert await a.backend.client.exists(a.store.claim_key(CacheKey("t:team-a", "d4"))) == 1


async def test_a_claim_held_by_this_process_is_led_one_held_elsewhere_is_followed(
        redis_server: RedisServer, make_exchange: Callable[..., Exchange]) -> None:
    """Held by a request of this process (it became this flight's follower): lead, do not wait on
    yourself. Held by another process: follow its entry."""
    prefix, decisions = f"f{secrets.token_hex(3)}:", list[str]()
    a, b = process(redis_server.url, prefix, decisions), process(redis_server.url, prefix, decisions)
    pa, pb = Provider(), Provider()
    pa.release.set()
    mine = CacheKey("t:team-a", "d5")
    ex = make_exchange()
    ex.state.set(PRE_CLAIM, Claim(a.store.claim_key(mine), won=False, holder=a.owner.encode(), of=mine,
                                  life_ms=5000))
    started = time.monotonic()
    await drain(await a.call(ex, pa, mine, 5.0))
    assert pa.calls == 1 and decisions == ["fleet_leader"] and time.monotonic() - started < 1.0

    theirs = CacheKey("t:team-a", "d6")
    await a.backend.client.set(a.store.claim_key(theirs), b.owner, px=5000)
    follower_ex = make_exchange()
    follower_ex.state.set(PRE_CLAIM, Claim(a.store.claim_key(theirs), won=False, holder=b.owner.encode(),
                                           of=theirs, life_ms=5000))
    follower = asyncio.create_task(a.call(follower_ex, pa, theirs, 5.0))
    b.store.set(theirs, CachedAnswer(operation="chat", body=ANSWER, created=time.time()), 30)  # b's entry
    assert await drain(await follower) == ANSWER and pa.calls == 1 and pb.calls == 0
    assert decisions == ["fleet_leader", "fleet_follower"]


async def test_without_the_lookups_claim_a_claim_of_this_process_is_led_anothers_followed(
        redis_server: RedisServer, make_exchange: Callable[..., Exchange]) -> None:
    """No claim from the lookup (it failed: say it timed out after Redis had run it, leaving this process's
    claim behind): a claim that is already this process's is led at once, not waited on for the whole
    wait. Control: another process's claim is followed (its entry answers)."""
    prefix, decisions = f"f{secrets.token_hex(3)}:", list[str]()
    a, b = process(redis_server.url, prefix, decisions), process(redis_server.url, prefix, decisions)
    pa = Provider()
    pa.release.set()
    mine, theirs = CacheKey("t:team-a", "d7"), CacheKey("t:team-a", "d8")
    await a.backend.client.set(a.store.claim_key(mine), a.owner, px=5000)  # what the timed-out lookup left
    started = time.monotonic()
    await drain(await a.call(make_exchange(), pa, mine, 5.0))
    assert pa.calls == 1 and decisions == ["fleet_leader"] and time.monotonic() - started < 1.0

    await a.backend.client.set(a.store.claim_key(theirs), b.owner, px=5000)
    follower = asyncio.create_task(a.call(make_exchange(), pa, theirs, 5.0))
    await until(lambda: len(decisions) == 1 and not follower.done())
    b.store.set(theirs, CachedAnswer(operation="chat", body=ANSWER, created=time.time()), 30)  # b's entry
    assert await drain(await follower) == ANSWER and pa.calls == 1
    assert decisions == ["fleet_leader", "fleet_follower"]


async def test_release_unused_gives_back_only_an_unused_claim_of_its_own(redis_server: RedisServer) -> None:
    redis = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=redis_server.url), time.monotonic)
    script = redis.script(RELEASE_IF_MINE)
    prefix = f"r{secrets.token_hex(3)}:"
    # The lane opened first, as the gateway's start-up does (``warm``): a first connect slower than
    # ``timeout_ms`` on a loaded machine would fail the first deferred release and leave the unused claim
    # (this test failed once beside valgrind runs; not reproduced under 4 busy loops, with or without this).
    assert await redis.warm(5.0)
    try:
        for name, holder, won, used, kept in (("unused", "me", True, False, False),
                                              ("used", "me", True, True, True),
                                              ("not-won", "other", False, False, True),
                                              ("taken-over", "other", True, False, True)):
            key = f"{prefix}{name}"
            await redis.client.set(key, holder, px=5000)
            release_unused(redis, script, Claim(key, won=won, holder=None, of=CacheKey("t", name),
                                                 life_ms=1000, used=used), "me")
            await redis.drain()
            assert await redis.client.exists(key) == int(kept), name
    finally:
        await redis.close()


async def test_a_stored_answer_ends_its_claim_with_no_release_write(
        redis_server: RedisServer, make_exchange: Callable[..., Exchange]) -> None:
    """The entry's write replaces the claim at its key: the leader's held release is dropped and never sent.
    Positive control: an answer that is not stored sends its release (the claim turns ``done``)."""
    prefix, decisions = f"f{secrets.token_hex(3)}:", list[str]()
    a = process(redis_server.url, prefix, decisions)
    pa = Provider()
    pa.release.set()
    stored, refused = CacheKey("t:team-a", "d7"), CacheKey("t:team-a", "d8")
    try:
        trips = round_trips(a.backend)  # what goes over the lane: the deferred and held writes
        for key in (stored, refused):
            await drain(await a.call(make_exchange(), pa, key, 5.0))
        a.store.set(stored, CachedAnswer(operation="chat", body=ANSWER, created=time.time()), 30)
        await a.backend.drain()
        sent = [name for trip in trips for name in trip]
        # The two claims (no lookup took them here), the refused one's release; the entry.
        assert sent.count("EVALSHA") == 3 and sent.count("SET") == 1
        assert await a.backend.client.get(a.store.claim_key(refused)) == b"done"
        answer, held = await a.store.peek(stored)
        assert answer is not None and not held
    finally:
        await a.backend.close()


async def test_the_release_turns_only_this_processs_claim_into_done(redis_server: RedisServer) -> None:
    """Sent when no entry came: this process's claim is kept ``done`` for the grace; another process's claim
    and an entry are left as they are."""
    prefix, decisions = f"f{secrets.token_hex(3)}:", list[str]()
    a = process(redis_server.url, prefix, decisions)
    mine, theirs, entry = CacheKey("t:team-a", "m"), CacheKey("t:team-a", "t"), CacheKey("t:team-a", "e")
    try:
        await a.backend.client.set(a.store.claim_key(mine), a.owner, px=5000)
        await a.backend.client.set(a.store.claim_key(theirs), "someone-else", px=5000)
        a.store.set(entry, CachedAnswer(operation="chat", body=ANSWER, created=time.time()), 30)
        await a.backend.drain()
        for key in (mine, theirs, entry):
            a.backend.defer(a.release(a.store.claim_key(key)))
        await a.backend.drain()
        assert await a.backend.client.get(a.store.claim_key(mine)) == b"done"
        assert 0 < await a.backend.client.pttl(a.store.claim_key(mine)) <= 1000
        assert await a.backend.client.get(a.store.claim_key(theirs)) == b"someone-else"
        raw = await a.backend.client.get(a.store.claim_key(entry))
        assert isinstance(raw, bytes) and raw.startswith(ENTRY_MAGIC)  # the entry, as written
    finally:
        await a.backend.close()


async def test_led_through_a_flight_the_release_is_armed_by_the_flights_body_end(
        redis_server: RedisServer, make_exchange: Callable[..., Exchange]) -> None:
    """Led through single flight, the provider's body is read as it is (no wrapper): the flight tells of its
    end, which holds the release; the entry's write drops it (nothing sent), and an answer that is not stored
    sends it (the claim turns ``done``). A non-200 answer releases the claim at once (control: before its
    body is read)."""
    prefix, decisions = f"f{secrets.token_hex(3)}:", list[str]()
    a = process(redis_server.url, prefix, decisions)
    pa = Provider()
    pa.release.set()
    stored, refused, failed = (CacheKey("t:team-a", d) for d in ("d9", "d10", "d11"))
    try:
        trips = round_trips(a.backend)
        for key in (stored, refused):
            ex = make_exchange()
            flight = Flights().lead(key.digest, ex, pa)
            flight.lead_with(ex, partial(a.call, next=pa, key=key, wait_s=5.0, flight=flight))
            resp = await flight.wait(leader=True)
            assert isinstance(flight.body, OneChunk) and flight.on_body_end is not None  # the provider's body
            assert await drain(resp) == ANSWER and flight.on_body_end is None
        a.store.set(stored, CachedAnswer(operation="chat", body=ANSWER, created=time.time()), 30)
        await a.backend.drain()
        sent = [name for trip in trips for name in trip]
        assert sent.count("EVALSHA") == 3 and sent.count("SET") == 1  # two claims, the refused one's release
        assert await a.backend.client.get(a.store.claim_key(refused)) == b"done"
        answer, held = await a.store.peek(stored)
        assert answer is not None and not held

        async def error(ex: Exchange) -> UpstreamResponse:
            return UpstreamResponse(status=500, headers={}, body=OneChunk(b"{}"))

        ex = make_exchange()
        flight = Flights().lead(failed.digest, ex, error)
        flight.lead_with(ex, partial(a.call, next=error, key=failed, wait_s=5.0, flight=flight))
        resp = await flight.wait(leader=True)
        assert flight.on_body_end is None
        await a.backend.drain()
        assert await a.backend.client.get(a.store.claim_key(failed)) == b"done"
        assert await drain(resp) == b"{}"
    finally:
        await a.backend.close()


async def test_a_lookups_claim_leads_the_flight_as_given_and_its_body_end_releases_it(
        redis_server: RedisServer, make_exchange: Callable[..., Exchange]) -> None:
    """A claim the lookup took (or found this process's) makes the flight lead with its chain as given, no
    ``call`` around it: its body's end holds the release (dropped by the entry's write: nothing sent), an
    answer not stored sends it, a non-200 answer's is sent at its body's end, not held (control: not before
    it). Another process's claim, or one for another key, is left to ``call`` (nothing changed)."""
    prefix, decisions = f"f{secrets.token_hex(3)}:", list[str]()
    a = process(redis_server.url, prefix, decisions)
    pa = Provider()
    pa.release.set()
    stored, refused, failed = (CacheKey("t:team-a", d) for d in ("d12", "d13", "d14"))

    async def error(ex: Exchange) -> UpstreamResponse:
        return UpstreamResponse(status=500, headers={}, body=OneChunk(b"{}"))

    async def lead(key: CacheKey, call: Callable[[Exchange], Any]) -> UpstreamResponse:
        answer, claim = await a.store.get_or_claim(key, a.owner, 5000)
        assert answer is None and claim is not None and claim.won
        flight = Flights().lead(key.digest, make_exchange(), call)
        assert a.lead_claimed(claim, key, flight) and claim.used
        assert flight.on_body_end is not None
        return await flight.wait(leader=True)

    try:
        assert a.backend.lane is not None
        for source in (LOOKUP_OR_CLAIM, RELEASE_TO_GRACE):  # loaded: no NOSCRIPT sends one twice below
            await a.backend.lane.load(source)
        trips = round_trips(a.backend)
        for key in (stored, refused):
            assert await drain(await lead(key, pa)) == ANSWER
        a.store.set(stored, CachedAnswer(operation="chat", body=ANSWER, created=time.time()), 30)
        await a.backend.drain()
        sent = [name for trip in trips for name in trip]
        assert sent.count("EVALSHA") == 3 and sent.count("SET") == 1  # two lookups, the refused one's release
        assert await a.backend.client.get(a.store.claim_key(refused)) == b"done"
        assert (await a.store.peek(stored))[0] is not None and pa.calls == 2
        resp = await lead(failed, error)
        await a.backend.drain()
        assert await a.backend.client.get(a.store.claim_key(failed)) == a.owner.encode()  # not before its end
        assert await drain(resp) == b"{}"
        await a.backend.drain()
        assert await a.backend.client.get(a.store.claim_key(failed)) == b"done"
        assert decisions == ["fleet_leader"] * 3
        other = Claim("k", won=False, holder=b"another", of=stored, life_ms=5000)
        mine = Claim("k", won=True, holder=None, of=stored, life_ms=5000)
        flight = Flights().lead("x", make_exchange(), pa)
        assert not a.lead_claimed(other, stored, flight) and not a.lead_claimed(mine, refused, flight)
        assert flight.on_body_end is None and not other.used and not mine.used
    finally:
        await a.backend.close()
