"""Leases of shared rate-limit capacity, against a real Redis: no round trip from a lease, small limits stay
per request, two processes never admit more than the limit, a lease's rest comes back, a quota lesson voids
it, and Redis down falls back. The limiter's clock is injected: a lease expires when the test says so."""
from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from gateway.config import ConfigError, parse_config
from gateway.config_model import AuthKeyConfig, StateConfig
from gateway.state.redis_client import GuardedRedis
from gateway.telemetry.metrics import Metrics
from policies.ratelimit.buckets import LimiterClock, MemoryBuckets
from policies.ratelimit.config import RateLimitConfig
from policies.ratelimit.lease import Leases
from policies.ratelimit.metrics import RateLimitMetrics
from policies.ratelimit.model import Limit, LimitSet, Verdict, client_limits, upstream_limits
from policies.ratelimit.redis_buckets import RedisBuckets
from policies.ratelimit.runtime import Grant, RateLimiter
from tests.support.redis_trips import round_trips
from tests.support.servers import RedisServer, free_port, redis_server_binary
from tests.support.until import until

RPM600 = Limit("rpm", "bucket", 600.0, 10.0)
BIG = LimitSet("client", "c:t:big", "t", (RPM600,), lease=0.02)  # leases of 12 requests
SMALL = LimitSet("client", "c:t:small", "t", (Limit("rpm", "bucket", 6.0, 0.1),), lease=0.02)
WARM = LimitSet("client", "c:t:warm", "t", (Limit("rpm", "bucket", 6.0, 0.1),))


@dataclass
class Process:
    """One process's limiter on the shared Redis, on a clock the test moves."""

    limiter: RateLimiter
    guarded: GuardedRedis
    now: list[float]

    @property
    def metrics(self) -> RateLimitMetrics:
        return self.limiter.metrics

    def count(self, outcome: str) -> float:
        return float(self.metrics.leases("client", outcome)._value.get())

    async def admit(self, ls: LimitSet, n: int, tokens: int = 0) -> int:
        """How many of ``n`` requests are admitted."""
        admitted = 0
        for i in range(n):
            verdict = await self.limiter.acquire(ls, ls.amounts(tokens), f"m{i}")
            admitted += verdict.ok
        return admitted


def process(url: str, prefix: str) -> Process:
    loop = asyncio.get_running_loop()
    g = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=url, timeout_ms=5000), loop.time)
    now = [1000.0]
    clock = LimiterClock(now=lambda: now[0])
    limiter = RateLimiter(buckets=RedisBuckets(g, prefix, MemoryBuckets(clock)),
                          metrics=RateLimitMetrics.register(Metrics()), clock=clock, loop_time=loop.time)
    return Process(limiter, g, now)


@pytest_asyncio.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[tuple[Process, Process]]:
    """Two processes' limiters on one Redis, under a fresh prefix."""
    prefix = f"l{secrets.token_hex(4)}:"
    a, b = process(redis_server.url, prefix), process(redis_server.url, prefix)
    try:
        yield a, b
    finally:
        for p in (a, b):
            await p.limiter.drain()
            await p.guarded.close()


@pytest_asyncio.fixture
async def killable() -> AsyncIterator[tuple[RedisServer, Process]]:
    """A process on a Redis of its own, which the test may kill (the client's timeout 0.5 s)."""
    server = RedisServer(port=free_port(), binary=redis_server_binary() or "")
    server.start()
    p = process(server.url, "k:")
    p.guarded.timeout_s = 0.5
    try:
        yield server, p
    finally:
        await p.guarded.close()
        server.kill()


def test_lease_sizes_and_config() -> None:
    """A lease is a fraction of each bucket in whole units; small limits, concurrency and daily budgets are
    never leased; the setting is validated for upstreams and client keys."""
    assert BIG.lease_size == (12,) and SMALL.lease_size == ()
    up = upstream_limits("a", RateLimitConfig(rpm=10_000, tpm=1_000_000), 60.0)
    assert up is not None and up.lease_size == (180, 18_000)  # 2% of 0.9 x the quota
    conc = upstream_limits("a", RateLimitConfig(rpm=10_000, max_concurrency=8), 60.0)
    assert conc is not None and conc.lease_size == ()
    off = upstream_limits("a", RateLimitConfig(rpm=10_000, lease=0), 60.0)
    assert off is not None and off.lease_size == ()
    key = client_limits(AuthKeyConfig(key="k", tenant="t", rpm=1000), "h", 60.0)
    assert key is not None and key.lease_size == (20,)
    daily = client_limits(AuthKeyConfig(key="k", tenant="t", rpm=1000, daily_tokens=10**6), "h", 60.0)
    assert daily is not None and daily.lease_size == ()
    with pytest.raises(ConfigError) as raised:
        parse_config({"upstreams": {"a": {"base_url": "http://127.0.0.1:9/v1", "api_key": "x",
                                          "rate_limit": {"rpm": 60, "lease": 0.5}}},
                      "routes": [{"upstream": "a"}],
                      "auth": {"mode": "keys",
                               "keys": [{"key": "k", "tenant": "t", "rpm": 5, "lease": -1}]}}, {})
    assert "upstreams.a.rate_limit.lease: must be in [0, 0.1]" in str(raised.value)
    assert "auth.keys[0].lease: must be in [0, 0.1]" in str(raised.value)


async def test_a_large_limit_is_admitted_from_the_lease_without_a_round_trip(
        pair: tuple[Process, Process]) -> None:
    """The first request takes the lease with its own admission; the next 12 need no Redis; the small
    limit's control makes one round trip per request."""
    a, _ = pair
    await a.admit(WARM, 1)  # the script is loaded (the first call of a new script takes two round trips)
    trips = round_trips(a.guarded)
    first = await a.limiter.acquire(BIG, (1,), "m")
    assert first.ok and first.levels == (599.0,)  # what one process alone would report
    assert len(trips) == 1 and a.count("granted") == 1
    levels = [(await a.limiter.acquire(BIG, (1,), f"m{i}")).levels[0] for i in range(12)]
    assert levels == [598.0 - i for i in range(12)]
    assert len(trips) == 1 and a.count("spent") == 12
    assert (await a.limiter.acquire(BIG, (1,), "n")).ok  # the lease is spent: the next asks again
    assert len(trips) == 2 and a.count("granted") == 2
    assert await a.admit(SMALL, 7) == 6  # exact, one round trip each
    assert len(trips) == 9 and a.count("refused") == 0


async def test_a_first_ask_refused_below_half_leaves_the_bucket_usable(pair: tuple[Process, Process]) -> None:
    """A bucket drained below half before anyone got a lease (a burst's plain admissions ahead of the one
    asking, as in one pipeline): the refused ask records no lease, and the next admissions still run in
    Redis (a held figure with no expiry once made every later script call fail: Redis counted as down, each
    process fell back to its local share and over-admitted). The control: the drained half was admitted."""
    a, b = pair
    plain = LimitSet("client", BIG.key, "t", BIG.limits)  # the same bucket, never leased
    assert await b.admit(plain, 320) == 320
    refused = await a.limiter.acquire(BIG, (1,), "m")
    assert refused.ok and not refused.leased and not refused.local and a.count("refused") == 1
    after = [await a.limiter.acquire(BIG, (1,), f"n{i}") for i in range(3)]
    assert all(v.ok and not v.local for v in after) and a.guarded.up and a.count("granted") == 0


async def test_two_processes_never_admit_more_than_the_limit(pair: tuple[Process, Process]) -> None:
    """Interleaved until both are refused: exactly the limit (plus what refilled meanwhile), and the last
    half of the bucket went per request (leases refused below half of it)."""
    a, b = pair
    loop = asyncio.get_running_loop()
    start = loop.time()
    admitted = 0
    refused = 0
    while refused < 4:
        verdicts = await asyncio.gather(*(p.limiter.acquire(BIG, (1,), "m") for p in (a, b, a, b)))
        admitted += sum(v.ok for v in verdicts)
        refused = sum(not v.ok for v in verdicts)
    refill = RPM600.rate * (loop.time() - start)
    assert 600 <= admitted <= 600 + refill + 1
    assert a.count("granted") + b.count("granted") <= 300 // 12 + 2  # none below half the bucket
    assert a.count("refused") + b.count("refused") > 0


async def test_renewals_and_joins_never_admit_more_than_the_limit(pair: tuple[Process, Process]) -> None:
    """Two processes, bursts of eight concurrent admissions each (joins), their clocks moved so that leases
    are renewed and expire between bursts: together they admit exactly the limit (plus what refilled), no
    more. The control: renewals and joins happened."""
    a, b = pair
    loop = asyncio.get_running_loop()
    start = loop.time()
    admitted, refused_rounds = 0, 0
    while refused_rounds < 3:
        bursts = [p.limiter.acquire(BIG, (1,), f"m{i}") for p in (a, b) for i in range(8)]
        verdicts = await asyncio.gather(*bursts)
        admitted += sum(v.ok for v in verdicts)
        refused_rounds += all(not v.ok for v in verdicts)
        for p in (a, b):
            p.now[0] += 0.3
            leases = p.limiter.leases
            assert leases is not None
            leases.sweep()
            await p.limiter.drain()
    refill = RPM600.rate * (loop.time() - start)
    assert 600 <= admitted <= 600 + refill + 1
    assert a.count("joined") + b.count("joined") > 0
    assert a.count("granted") + b.count("granted") > 2 and a.count("refused") + b.count("refused") > 0


async def test_an_unused_lease_comes_back_for_the_other_process(pair: tuple[Process, Process]) -> None:
    """Process a holds 12 leased requests; b drains the bucket and is refused; a's lease expires, its rest
    goes back, and b is admitted from it."""
    a, b = pair
    assert await a.admit(BIG, 1) == 1 and a.limiter.leases is not None and a.limiter.leases.held
    assert await b.admit(BIG, 700) >= 587  # everything but a's request and its lease (plus refill)
    assert await b.admit(BIG, 1) == 0
    a.now[0] += 1.5  # the lease's lifetime has passed on a's clock
    a.limiter.leases.sweep()
    assert not a.limiter.leases.held and a.count("returned") == 1
    await a.limiter.drain()  # the deferred settlement has reached Redis
    assert await b.admit(BIG, 12) == 12


async def test_the_bucket_never_refills_over_what_leases_hold(pair: tuple[Process, Process]) -> None:
    """While a's lease holds 12 requests, refunds and refill stop at 600 - 12: the shared level plus the
    leases never exceeds the capacity (a burst can take no more than one bucket would give). The held figure
    goes when the lease is given back."""
    a, b = pair
    await a.admit(BIG, 1)
    buckets = b.limiter.buckets
    assert isinstance(buckets, RedisBuckets)
    await buckets.settle(BIG, (100,), "")  # a refund larger than the room left
    key = buckets.keys(BIG)[0]
    assert float(await b.guarded.client.hget(key, "rpm")) == 588.0
    assert float(await b.guarded.client.hget(key, "rpm~")) == 12.0
    a.now[0] += 1.5
    leases = a.limiter.leases
    assert leases is not None
    leases.sweep()
    await a.limiter.drain()
    assert float(await b.guarded.client.hget(key, "rpm~")) == 0.0
    assert 599.0 <= float(await b.guarded.client.hget(key, "rpm")) <= 600.0  # 588 + the rest of 11


async def test_what_a_lease_spent_stops_counting_as_held_at_the_next_ask(
        pair: tuple[Process, Process]) -> None:
    """Spent tokens are gone, not held: the next lease request releases them, so what Redis counts as held
    stays at most what this process may still admit (under-admission does not grow with traffic)."""
    a, _ = pair
    await a.admit(BIG, 13)  # takes a lease of 12 and spends it
    key = a.limiter.buckets.keys(BIG)[0]  # type: ignore[union-attr]
    assert float(await a.guarded.client.hget(key, "rpm~")) == 12.0
    await a.admit(BIG, 1)  # asks again: releases the 12 spent, holds the new 12
    assert float(await a.guarded.client.hget(key, "rpm~")) == 12.0 and a.count("granted") == 2
    await a.admit(BIG, 40)
    assert float(await a.guarded.client.hget(key, "rpm~")) <= 12.0


async def test_the_lease_expires_on_its_own_timer(pair: tuple[Process, Process]) -> None:
    """Nobody asks again: the loop's timer returns the lease once the limiter's clock says it expired."""
    a, _ = pair
    await a.admit(BIG, 1)
    leases = a.limiter.leases
    assert leases is not None and leases.held
    a.now[0] += 1.5
    await until(lambda: not leases.held, timeout=5, message="the expired lease is given back")
    assert a.count("returned") == 1


async def test_a_quota_lesson_or_a_pause_voids_the_lease(pair: tuple[Process, Process]) -> None:
    """A provider's 429 drops the lease at once: the next request asks Redis and finds the pause."""
    a, _ = pair
    ls = upstream_limits("p", RateLimitConfig(rpm=60_000, tpm=6_000_000), 60.0)
    assert ls is not None and ls.lease_size
    amounts = ls.amounts(100)
    grant = a.limiter.grant(ls, await a.limiter.acquire(ls, amounts, "m"), amounts, "m", 100, 10, False)
    grant.seq = a.limiter.pending_of(ls).add(100)
    leases = a.limiter.leases
    assert leases is not None and ls.key in leases.held
    assert (await a.limiter.acquire(ls, amounts, "n")).ok  # from the lease
    a.limiter.observe(grant, 429, {"retry-after": "30"})
    assert ls.key not in leases.held and a.metrics.leases("upstream", "voided")._value.get() == 1
    await a.limiter.drain()
    trips = round_trips(a.guarded)
    refused = await a.limiter.acquire(ls, amounts, "o")
    assert not refused.ok and refused.wait_s >= 29 and len(trips) == 1  # paused (buckets held down too)


async def test_a_lesson_of_lower_remaining_voids_the_lease(pair: tuple[Process, Process]) -> None:
    """x-ratelimit-remaining below what we thought: the lease goes (the provider did not count it)."""
    a, _ = pair
    ls = upstream_limits("q", RateLimitConfig(rpm=6_000), 60.0)  # leases of 108 requests
    assert ls is not None
    loop = asyncio.get_running_loop()
    grant = a.limiter.grant(ls, await a.limiter.acquire(ls, (1,), "m"), (1,), "m", 0, 0, False)
    grant.seq = a.limiter.pending_of(ls).add(0)
    a.limiter.observe(grant, 200, {"x-ratelimit-remaining-requests": "5"})
    leases = a.limiter.leases
    assert leases is not None and ls.key not in leases.held
    taught = loop.time()
    await a.limiter.drain()
    admitted = await a.admit(ls, 10)
    assert 5 <= admitted <= 5 + ls.limits[0].rate * (loop.time() - taught) + 1


async def test_redis_down_spends_the_lease_then_falls_back(killable: tuple[RedisServer, Process]) -> None:
    """The lease's tokens were taken already: it keeps admitting while Redis is down; then the local
    fallback decides, and the lease's rest is owed to Redis."""
    server, p = killable
    assert await p.admit(BIG, 1) == 1
    server.kill()
    assert await p.admit(BIG, 5) == 5  # from the lease: no Redis needed
    p.now[0] += 1.5
    verdict = await p.limiter.acquire(BIG, (1,), "x")
    assert verdict.ok and verdict.local  # the fallback's share
    await p.limiter.drain()
    buckets = p.limiter.buckets
    assert isinstance(buckets, RedisBuckets) and not buckets.owed  # the give-back is not replayed:
    # Redis stops counting the lease as held by itself (HOLD_MARGIN_MS after its expiry)


async def test_a_renewal_redis_does_not_answer_leaves_the_lease_to_expire(
        killable: tuple[RedisServer, Process]) -> None:
    """Redis dies: the renewal fails (no retry in the lease's life), the lease keeps admitting until it
    expires, then the fallback decides. The control: the renewal was asked."""
    server, p = killable
    assert await p.admit(BIG, 3) == 3
    leases = p.limiter.leases
    assert leases is not None
    server.kill()
    p.now[0] += 0.6
    leases.sweep()
    assert BIG.key in leases.asking  # the control: asked
    await until(lambda: BIG.key not in leases.asking, timeout=5, message="the renewal fails")
    lease = leases.held[BIG.key]
    assert lease.renew_at == lease.expires and p.count("granted") == 1
    assert await p.admit(BIG, 2) == 2 and p.count("spent") == 4  # still from the lease
    p.now[0] += 0.5
    verdict = await p.limiter.acquire(BIG, (1,), "x")
    assert verdict.ok and verdict.local and BIG.key not in leases.held


async def test_admissions_that_joined_a_lease_request_redis_did_not_answer_decide_locally(
        killable: tuple[RedisServer, Process]) -> None:
    """Redis dies as a lease request leaves: the admissions that joined it take the local fallback's
    verdict when it fails, instead of a second round trip each to a Redis that is not there. The control:
    they joined, and the one that asked went to Redis."""
    server, p = killable
    await p.admit(WARM, 1)
    server.kill()
    trips = round_trips(p.guarded)
    verdicts = await asyncio.gather(*(p.limiter.acquire(BIG, (1,), f"m{i}") for i in range(4)))
    assert all(v.ok and v.local for v in verdicts) and p.count("joined") == 3
    assert len(trips) == 1


@pytest.mark.parametrize("cancel", [True, False])
async def test_one_lease_request_at_a_time(pair: tuple[Process, Process], cancel: bool) -> None:
    """Concurrent admissions of one set ask for one lease between them (bounded under-admission)."""
    a, _ = pair
    verdicts = await asyncio.gather(*(a.limiter.acquire(BIG, (1,), f"m{i}") for i in range(8)))
    assert all(v.ok for v in verdicts) and a.count("granted") == 1
    leases = a.limiter.leases
    assert leases is not None and not leases.asking
    if cancel:
        a.now[0] += 1.5
        task = asyncio.ensure_future(a.limiter.acquire(BIG, (1,), "c"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: not leases.asking, timeout=5, message="the shielded lease request ends")
        assert a.count("granted") == 2 and BIG.key in leases.held  # the lease Redis granted is kept


async def _token_grants(a: Process, key: str, n: int, tokens: int) -> tuple[LimitSet, list[Grant]]:
    """``n`` admissions of ``tokens`` each, 600 rpm and 60,000 tpm, leased (12 requests, 1,200 tokens)."""
    tpm = Limit("tpm", "bucket", 60_000.0, 1000.0, tokens=True)
    ls = LimitSet("client", key, "t", (RPM600, tpm), lease=0.02)
    await a.admit(WARM, 1)
    grants = []
    for i in range(n):
        verdict = await a.limiter.acquire(ls, ls.amounts(tokens), f"m{i}")
        grants.append(a.limiter.grant(ls, verdict, ls.amounts(tokens), f"m{i}", tokens, 10, False))
    return ls, grants


async def test_a_refund_stays_in_the_lease_and_a_charge_goes_to_redis(pair: tuple[Process, Process]) -> None:
    """An answer that used less than it reserved gives the rest to the lease (no Redis write); one that used
    more is charged to the shared bucket at once."""
    a, _ = pair
    ls, grants = await _token_grants(a, "c:t:tokens", 2, 500)
    leases = a.limiter.leases
    assert leases is not None and leases.held[ls.key].left == [11, 700]
    await a.limiter.drain()
    trips = round_trips(a.guarded)
    a.limiter.settle(grants[0], 100)
    assert leases.held[ls.key].left == [11, 1100]
    a.limiter.settle(grants[1], 900)  # 400 over its reservation
    await a.limiter.drain()
    assert leases.held[ls.key].left == [11, 1100] and [t[0] for t in trips] == ["EVALSHA"]
    level = await a.guarded.client.hget(a.limiter.buckets.keys(ls)[0], "tpm")  # type: ignore[union-attr]
    assert float(level) < 60_000 - 500 - 1200 - 400 + 100  # the charge reached Redis (plus a little refill)


async def test_a_top_up_brings_the_lease_back_to_its_size(pair: tuple[Process, Process]) -> None:
    """Requests too big for what is left of the token lease keep asking for leases: each top-up asks only
    what brings every bucket's lease back to its size, so nothing piles up to be given back."""
    a, _ = pair
    tpm = Limit("tpm", "bucket", 600_000.0, 10_000.0, tokens=True)
    ls = LimitSet("client", "c:t:pile", "t", (RPM600, tpm), lease=0.02)  # leases: 12 requests, 12,000 tokens
    trips = round_trips(a.guarded)
    for i in range(5):
        assert (await a.limiter.acquire(ls, ls.amounts(12_000), f"m{i}")).ok
    leases = a.limiter.leases
    assert leases is not None and leases.held[ls.key].left == [12, 12_000]  # asked 1 and 12,000 each time
    assert len(trips) == 3 and a.count("granted") == 3 and a.count("spent") == 2 and a.count("returned") == 0
    key = a.limiter.buckets.keys(ls)[0]  # type: ignore[union-attr]
    assert float(await a.guarded.client.hget(key, "rpm~")) == 12.0  # one lease held, the spent released


async def test_admissions_while_a_lease_is_asked_for_wait_for_it(pair: tuple[Process, Process]) -> None:
    """Admissions that find no lease while one is on its way wait for it instead of each making a round
    trip: one ACQUIRE for eight concurrent requests. The control: once leases are refused (below half the
    bucket), concurrent admissions go to Redis each."""
    a, b = pair
    await a.admit(WARM, 1)
    trips = round_trips(a.guarded)
    verdicts = await asyncio.gather(*(a.limiter.acquire(BIG, (1,), f"m{i}") for i in range(8)))
    assert all(v.ok for v in verdicts) and trips == [["EVALSHA"]]
    assert a.count("granted") == 1 and a.count("joined") == 7 and a.count("spent") == 7
    plain = LimitSet("client", BIG.key, "t", BIG.limits)  # the same bucket, never leased
    assert await b.admit(plain, 300) == 300  # below half: the next lease request is refused
    a.now[0] += 1.5
    leases = a.limiter.leases
    assert leases is not None
    leases.sweep()
    await a.limiter.drain()
    assert (await a.limiter.acquire(BIG, (1,), "r")).ok and a.count("refused") == 1
    trips.clear()
    verdicts = await asyncio.gather(*(a.limiter.acquire(BIG, (1,), f"n{i}") for i in range(4)))
    assert all(v.ok for v in verdicts) and sum(map(len, trips)) == 4 and a.count("joined") == 7


async def test_a_lease_in_use_is_renewed_before_it_expires(pair: tuple[Process, Process]) -> None:
    """Half through its life a lease spent from is renewed in the background (an admission of nothing):
    its life is extended and it is topped up to its size, with no request waiting or going to Redis. A
    lease nobody spent from since its grant is not renewed: it expires and goes back (the control)."""
    a, _ = pair
    await a.admit(BIG, 4)  # the first takes the lease, three are spent from it
    leases = a.limiter.leases
    assert leases is not None
    lease = leases.held[BIG.key]
    assert lease.left == [9] and a.count("granted") == 1
    trips = round_trips(a.guarded)
    a.now[0] += 0.6
    leases.sweep()
    await until(lambda: BIG.key not in leases.asking and a.count("granted") == 2, timeout=5,
                message="the renewal is answered")
    assert leases.held[BIG.key] is lease and lease.left == [12] and lease.expires == a.now[0] + 1.0
    assert len(trips) == 1 and trips[0] == ["EVALSHA"]
    key = a.limiter.buckets.keys(BIG)[0]  # type: ignore[union-attr]
    assert float(await a.guarded.client.hget(key, "rpm~")) == 12.0  # the 3 spent released, 3 topped up
    a.now[0] += 0.6  # half through the renewed lease's life, nothing spent from it
    leases.sweep()
    await a.limiter.drain()
    assert a.count("granted") == 2 and len(trips) == 1
    a.now[0] += 0.5
    leases.sweep()
    assert BIG.key not in leases.held and a.count("returned") == 1


async def test_a_lease_that_expires_while_its_renewal_is_on_its_way_waits_for_it(
        pair: tuple[Process, Process]) -> None:
    """The renewal was asked while the lease lived, so Redis still counts it as held when the renewal runs:
    the lease is not given back at its expiry but spends nothing until the answer, which extends it; an
    admission meanwhile waits for that answer and is then admitted from the lease."""
    a, _ = pair
    await a.admit(BIG, 2)
    leases = a.limiter.leases
    assert leases is not None
    a.now[0] += 0.6
    leases.sweep()  # the renewal is on its way (a task not started yet)
    assert BIG.key in leases.asking
    a.now[0] += 0.5  # past the lease's expiry
    trips = round_trips(a.guarded)
    assert leases.take(BIG, (1,)) is None and BIG.key in leases.held  # kept, not spent from
    verdict = await a.limiter.acquire(BIG, (1,), "w")
    assert verdict.ok and a.count("joined") == 1 and a.count("granted") == 2 and a.count("returned") == 0
    assert leases.held[BIG.key].left == [11] and len(trips) == 1  # the renewal only


async def test_a_refund_after_the_next_ask_stays_in_the_lease(pair: tuple[Process, Process]) -> None:
    """An answer still in flight when its lease was renewed gives its unused tokens back to the lease: the
    renewal kept room for it (the spent tokens of a token bucket stay held up to one lease), where it once
    went to Redis; the spent requests are released as before. The control: once the lease is given back,
    such a refund goes to Redis."""
    a, _ = pair
    ls, grants = await _token_grants(a, "c:t:flight", 3, 300)
    leases = a.limiter.leases
    assert leases is not None and leases.held[ls.key].left == [10, 600]
    a.now[0] += 0.6
    leases.sweep()
    await until(lambda: a.count("granted") == 2, timeout=5, message="the renewal is answered")
    await a.limiter.drain()
    lease = leases.held[ls.key]
    assert lease.left == [12, 1200] and lease.granted == [12, 1800]  # 600 spent kept as room
    key = a.limiter.buckets.keys(ls)[0]  # type: ignore[union-attr]
    assert float(await a.guarded.client.hget(key, "tpm~")) == 1800.0
    assert float(await a.guarded.client.hget(key, "rpm~")) == 12.0
    trips = round_trips(a.guarded)
    a.limiter.settle(grants[1], 100)
    assert lease.left == [12, 1400]
    await a.limiter.drain()
    assert trips == []
    leases.release_all()
    a.limiter.settle(grants[2], 100)
    await a.limiter.drain()
    assert trips == [["EVALSHA"]]  # the give-back and the refund: one APPLY
    assert float(await a.guarded.client.hget(key, "tpm~")) == 0.0


async def test_a_reload_or_a_shutdown_gives_the_lease_back(pair: tuple[Process, Process]) -> None:
    """A reloaded config brings a new limit set: the old one's lease goes back; so does every lease at
    shutdown (``close``), and the other process can spend what came back."""
    a, b = pair
    await a.admit(BIG, 1)
    reloaded = LimitSet("client", BIG.key, "t", (RPM600,), lease=0.02)
    assert (await a.limiter.acquire(reloaded, (1,), "r")).ok
    assert a.count("returned") == 1 and a.count("granted") == 2
    await a.limiter.close()
    assert a.count("returned") == 2
    leases = a.limiter.leases
    assert leases is not None and not leases.held
    assert await b.admit(BIG, 700) >= 598  # all but a's two requests (plus refill)


def test_a_lease_voided_on_its_way_is_dropped_when_it_comes() -> None:
    """A quota lesson while the lease request is in flight: the granted lease is not kept, and the shared
    state is told it is not held."""
    given: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    counted: list[str] = []

    @dataclass
    class Counting:
        outcome: str

        def inc(self, amount: float) -> None:
            counted.append(self.outcome)

    leases = Leases(now=lambda: 0.0, speed=lambda: 1.0, give_back=lambda ls, r, g: given.append((r, g)),
                    counter=lambda scope, outcome: Counting(outcome), renew=lambda ls: None)
    ask = leases.ask(BIG, (1,))
    assert ask is not None and ask.size == (12,) and ask.release == (0,)
    assert leases.ask(BIG, (1,)) is None  # one request asks at a time
    leases.void(BIG)
    verdict = leases.answered(BIG, ask.size, Verdict(True, "", 0.0, (587.0,), leased=True))
    assert verdict.levels == (587.0,) and not leases.held and not leases.asking
    assert given == [((0,), (12,))] and counted == ["granted", "voided"]
