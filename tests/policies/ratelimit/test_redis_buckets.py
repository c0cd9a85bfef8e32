"""The Lua buckets against a real Redis: same arithmetic as memory, shared by replicas, TTLs, fallback."""
from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from gateway.config_model import StateConfig
from gateway.state.redis_client import GuardedRedis
from policies.ratelimit.buckets import LimiterClock, MemoryBuckets
from policies.ratelimit.model import COOLDOWN, NEVER, Limit, LimitSet, client_limits
from policies.ratelimit.redis_buckets import RedisBuckets, Update
from policies.ratelimit.redis_scripts import APPLY
from tests.support.redis_trips import round_trips
from tests.support.servers import RedisServer, free_port

RPM6 = Limit("rpm", "bucket", 6.0, 6 / 60)
TPM600 = Limit("tpm", "bucket", 600.0, 600 / 60, tokens=True)
CONC2 = Limit("concurrency", "slots", 2.0)
DAY1000 = Limit("daily_tokens", "day", 1000.0, tokens=True)
LS = LimitSet("upstream", "u:test", "test", (RPM6, TPM600, CONC2), lease_s=30.0, cooldown=True)


def guarded(url: str) -> GuardedRedis:
    loop = asyncio.get_running_loop()
    return GuardedRedis.from_config(StateConfig(backend="redis", redis_url=url, timeout_ms=200), loop.time)


def make(g: GuardedRedis, prefix: str, hint: int = 1) -> RedisBuckets:
    loop = asyncio.get_running_loop()
    return RedisBuckets(g, prefix, MemoryBuckets(LimiterClock(now=loop.time)), replicas_hint=hint)


@pytest_asyncio.fixture
async def shared(redis_server: RedisServer) -> AsyncIterator[tuple[RedisBuckets, RedisBuckets]]:
    """Two replicas' buckets on one Redis, under a fresh prefix."""
    prefix = f"t{secrets.token_hex(4)}:"
    g1, g2 = guarded(redis_server.url), guarded(redis_server.url)
    try:
        yield make(g1, prefix), make(g2, prefix)
    finally:
        await g1.close()
        await g2.close()


async def test_acquire_is_all_or_nothing_and_shared(shared: tuple[RedisBuckets, RedisBuckets]) -> None:
    """Replicas draw from one bucket; a refused request takes nothing; the wait is the refill time."""
    a, b = shared
    v1 = await a.acquire(LS, (1, 500, 1), "m1")
    assert v1.ok and not v1.local and v1.levels == (5.0, 100.0, 1.0)
    refused = await b.acquire(LS, (1, 200, 1), "m2")
    assert not refused.ok and refused.failed == "tpm"
    assert 9.5 <= refused.wait_s <= 10.0
    v2 = await b.acquire(LS, (1, 100, 1), "m3")
    assert v2.ok and v2.levels[0] == 4.0 and v2.levels[2] == 0.0
    full = await a.acquire(LS, (1, 0, 1), "m4")
    assert not full.ok and full.failed == "concurrency" and full.wait_s == 0.0
    too_big = await a.acquire(LS, (1, 601, 0), "m5")
    assert too_big.wait_s == NEVER


async def test_settle_refunds_charges_and_releases(shared: tuple[RedisBuckets, RedisBuckets]) -> None:
    """Settling gives back unused tokens (capped), charges excess as debt and frees the slot."""
    a, b = shared
    assert (await a.acquire(LS, (1, 500, 1), "m1")).ok
    await b.settle(LS, (0, 400, 0), "m1")  # another replica may settle: state is shared
    v = await a.acquire(LS, (1, 0, 1), "m2")
    assert v.ok and 499 <= v.levels[1] <= 501 and v.levels[2] == 1.0  # m1 released its slot
    await a.settle(LS, (0, -700, 0), "m2")
    refused = await a.acquire(LS, (1, 10, 1), "m3")
    assert not refused.ok and refused.failed == "tpm" and refused.levels[1] < 0
    assert refused.levels[2] == 2.0  # both slots released


async def test_every_key_has_a_ttl_and_no_secret(redis_server: RedisServer,
                                                 shared: tuple[RedisBuckets, RedisBuckets]) -> None:
    """All keys the scripts write expire; client keys are named by tenant and a digest, never the key."""
    a, _ = shared
    from gateway.auth import digest
    from gateway.config_model import AuthKeyConfig

    key_hash = digest("sk-team-secret")
    ls = client_limits(AuthKeyConfig(key="", tenant="team-a", rpm=5, max_concurrency=2, daily_tokens=100),
                       key_hash, 30.0)
    assert ls is not None
    assert (await a.acquire(ls, ls.amounts(10), "m1")).ok
    await a.learn(LS, "", None, 1.5)
    names = await a.guarded.client.keys(a.prefix + "*")
    assert len(names) == 3  # client hash + client slots + upstream cooldown
    for name in names:
        assert await a.guarded.client.pttl(name) > 0
        assert b"sk-team-secret" not in name and key_hash.encode() not in name
    assert any(b"rl:c:team-a:" in n for n in names)


async def test_day_budget_in_redis(shared: tuple[RedisBuckets, RedisBuckets]) -> None:
    """The daily budget is counted per Redis day and refunded on settle."""
    a, _ = shared
    ls = LimitSet("client", "c:t:x", "t", (DAY1000,))
    assert (await a.acquire(ls, (900,), "m1")).ok
    refused = await a.acquire(ls, (200,), "m2")
    assert not refused.ok and refused.failed == "daily_tokens" and 0 < refused.wait_s <= 86400
    await a.settle(ls, (500,), "m1")
    assert (await a.acquire(ls, (200,), "m2")).ok


async def test_pause_is_shared_and_shrink_lowers(shared: tuple[RedisBuckets, RedisBuckets]) -> None:
    """A pause learned by one replica refuses the other's requests; a learned level lowers the bucket."""
    a, b = shared
    await a.learn(LS, "rpm", 2.0, 0.0)
    v = await b.acquire(LS, (1, 0, 0), "m1")
    assert v.ok and v.levels[0] == pytest.approx(1.0, abs=0.01)
    await a.learn(LS, "", None, 2.0)
    refused = await b.acquire(LS, (1, 0, 0), "m2")
    assert not refused.ok and refused.failed == COOLDOWN and 1.8 <= refused.wait_s <= 2.0


async def test_scripts_reload_after_flush(shared: tuple[RedisBuckets, RedisBuckets]) -> None:
    """A Redis that lost its scripts (restart, SCRIPT FLUSH) is served again without any error."""
    a, _ = shared
    assert (await a.acquire(LS, (1, 1, 1), "m1")).ok
    await a.guarded.client.script_flush()
    assert (await a.acquire(LS, (1, 1, 1), "m2")).ok
    await a.settle(LS, (0, 1, 0), "m1")
    await a.learn(LS, "rpm", 1.0, 0.0)


async def test_updates_share_one_round_trip_and_survive_a_script_flush(
        shared: tuple[RedisBuckets, RedisBuckets]) -> None:
    """Settlements and lessons sent together all apply, also when Redis lost the scripts in between."""
    a, b = shared
    for flush in (False, True):
        assert (await a.acquire(LS, (1, 300, 1), "m1")).ok
        assert (await a.acquire(LS, (1, 300, 1), "m2")).ok
        assert not (await b.acquire(LS, (0, 0, 1), "m3")).ok  # both slots taken
        if flush:
            await a.guarded.client.script_flush()
        await a.apply([a.settle_update(LS, (0, 300, 0), "m1"), a.settle_update(LS, (0, 200, 0), "m2"),
                       a.learn_update(LS, [("rpm", 1.0)], 0.0)])
        refill = await b.acquire(LS, (1, 0, 1), "m3")  # slots free, tokens back, rpm learned down to 1
        assert refill.ok and refill.levels[0] < 1.0 and refill.levels[1] >= 500
        await b.settle(LS, (0, 0, 0), "m3")
        await a.guarded.client.delete(*a.keys(LS))


async def test_fallback_when_redis_is_unreachable() -> None:
    """No Redis: decisions come from local buckets at limit / replicas_hint, and settle goes there too."""
    g = guarded(f"redis://127.0.0.1:{free_port()}/0")
    try:
        b = make(g, "x:", hint=2)
        verdicts = [await b.acquire(LS, (1, 10, 0), f"m{i}") for i in range(4)]
        assert [v.ok for v in verdicts] == [True, True, True, False]  # 6 rpm / 2 replicas
        assert all(v.local for v in verdicts)
        assert (await b.acquire(LS, (0, 0, 1), "s")).ok
        assert not (await b.acquire(LS, (0, 0, 1), "t")).ok  # 2 slots / 2 replicas
        await b.settle(LS, (0, 0, 0), "s", local=True)
        assert (await b.acquire(LS, (0, 0, 1), "t")).ok
        assert not g.up
    finally:
        await g.close()


async def test_releases_missed_during_an_outage_are_replayed() -> None:
    """A slot released while Redis is down is released for real once Redis answers again."""
    from tests.support.servers import redis_server_binary

    server = RedisServer(port=free_port(), binary=redis_server_binary() or "")
    server.start()
    g = guarded(server.url)
    g.cooldown_s = 0.0
    try:
        b = make(g, "o:")
        assert (await b.acquire(LS, (1, 1, 1), "held")).ok
        server.kill()
        await b.settle(LS, (0, 1, 0), "held")
        assert len(b.owed) == 1
        server.start()
        await g.client.connection_pool.disconnect()
        for _ in range(20):
            verdict = await b.acquire(LS, (1, 1, 1), "next")
            if not verdict.local:
                break
        assert not verdict.local
        assert b._replaying is not None
        await b._replaying
        assert not b.owed
    finally:
        await g.close()
        server.kill()


# The lesson script as it was before lessons became operations of APPLY: one call per bucket (reference).
LEARN_ONE = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function bucket(key, f, cap, rate)
  local v = redis.call('HMGET', key, f, f .. '@')
  if not v[1] then return cap end
  return math.min(cap, tonumber(v[1]) + (now - tonumber(v[2])) * rate)
end
if ARGV[1] ~= '' then
  local level = tonumber(ARGV[4])
  if level < bucket(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])) then
    redis.call('HSET', KEYS[1], ARGV[1], level, ARGV[1] .. '@', now)
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
  end
end
local ms = tonumber(ARGV[5])
if ms > 0 and redis.call('PTTL', KEYS[2]) < ms then redis.call('SET', KEYS[2], '1', 'PX', ms) end
return 1
"""


async def test_one_lesson_sets_both_buckets_and_the_pause_as_separate_calls_did(
        shared: tuple[RedisBuckets, RedisBuckets]) -> None:
    """requests + tokens + pause in one call leave exactly what three calls of the old script left."""
    a, _ = shared
    two = LimitSet("upstream", "u:two", "two", LS.limits, lease_s=30.0, cooldown=True)
    one = LimitSet("upstream", "u:one", "one", LS.limits, lease_s=30.0, cooldown=True)
    r = a.guarded.client
    for ls in (two, one):
        assert (await a.acquire(ls, (1, 100, 0), "m")).ok  # both buckets exist: 5 rpm, 500 tpm left
    hash_two, _, cool_two = a.keys(two)
    reference = r.register_script(LEARN_ONE)
    for args in (["rpm", "6.0", "0.1", 2.0, 0, 120000], ["tpm", "600.0", "10.0", 123.0, 0, 120000],
                 ["tpm", "600.0", "10.0", 900.0, 0, 120000],  # above the level: never raises it
                 ["", 0, 0, 0, 1500, 120000]):
        await reference(keys=[hash_two, cool_two], args=args)
    await a.apply([a.learn_update(one, [("rpm", 2.0), ("tpm", 123.0), ("tpm", 900.0)], 1.5)])
    hash_one, _, cool_one = a.keys(one)
    assert await r.hmget(hash_one, "rpm", "tpm") == await r.hmget(hash_two, "rpm", "tpm") == [b"2", b"123"]
    assert 1400 <= await r.pttl(cool_one) <= 1500 and 1400 <= await r.pttl(cool_two) <= 1500
    refused = await a.acquire(one, (1, 0, 0), "n")
    assert not refused.ok and refused.failed == COOLDOWN


async def test_deferred_updates_go_in_one_call(shared: tuple[RedisBuckets, RedisBuckets]) -> None:
    """Settlements and lessons deferred together: one round trip, one EVALSHA, each applied in order as
    an ``apply`` of its own would (compared on a second entity); every ``on_done`` runs."""
    a, b = shared
    batched = LS
    alone = LimitSet("upstream", "u:alone", "alone", LS.limits, lease_s=30.0, cooldown=True)
    for ls in (batched, alone):
        assert (await a.acquire(ls, (1, 300, 1), "m1")).ok
        assert (await a.acquire(ls, (1, 200, 1), "m2")).ok
    await a.guarded.client.script_load(APPLY)  # else the first call counts a NOSCRIPT round trip
    trips = round_trips(a.guarded)
    done: list[str] = []

    def updates(ls: LimitSet) -> list[Update]:
        return [a.settle_update(ls, (0, 250, 0), "m1"), a.learn_update(ls, [("tpm", 50.0)], 0.0),
                a.settle_update(ls, (0, -100, 0), "m2")]

    for i, u in enumerate(updates(batched)):
        a.defer(u, on_done=lambda i=i: done.append(f"u{i}"))
    await a.guarded.drain()
    assert trips == [["EVALSHA"]] and done == ["u0", "u1", "u2"]
    for u in updates(alone):
        await a.apply([u])
    got, want = await b.acquire(batched, (0, 0, 1), "x"), await b.acquire(alone, (0, 0, 1), "x")
    assert got.failed == want.failed == "tpm"  # lowered to 50, then charged 100: in debt
    assert got.levels == pytest.approx(want.levels, abs=0.1) and got.levels[1] == pytest.approx(-50, abs=0.1)
    assert got.levels[2] == 2.0  # both slots released


async def test_a_failed_batch_owes_its_settlements_and_the_next_update_starts_a_new_one() -> None:
    """Redis down: the batch's settlements are kept for replay, its lessons dropped; nothing deferred
    after the failure is lost with the old batch."""
    g = guarded(f"redis://127.0.0.1:{free_port()}/0")
    try:
        b = make(g, "f:")
        b.defer(b.settle_update(LS, (0, 5, 0), "m1"))
        b.defer(b.learn_update(LS, [("rpm", 1.0)], 2.0))
        await g.drain()
        assert [u.args[0] for u in b.owed] == [b"s"]
        b.defer(b.settle_update(LS, (0, 7, 0), "m2"))
        await g.drain()
        assert [u.args[2] for u in b.owed] == ["m1", "m2"]
        assert b.fallback.cooldown_left(b.local(LS)) > 0  # the lesson reached the fallback at once
    finally:
        await g.close()


async def test_a_client_set_reads_no_cooldown_flag(shared: tuple[RedisBuckets, RedisBuckets]) -> None:
    """Only entities that can be paused ask for their flag (as the memory buckets do)."""
    a, _ = shared
    ls = LimitSet("client", "c:t:y", "t", (RPM6,))
    paused = LimitSet("upstream", "c:t:y", "t", (RPM6,), cooldown=True)  # same keys, can be paused
    await a.learn(paused, "", None, 5.0)
    assert (await a.acquire(ls, (1,), "m1")).ok
    assert (await a.acquire(paused, (1,), "m2")).failed == COOLDOWN
