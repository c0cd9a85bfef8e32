"""The coalesce policy: identical deterministic requests share one call; others and bypassers do not."""
from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import orjson
import pytest_asyncio

from gateway.appstate import AppState
from gateway.exchange import Exchange, UpstreamResponse
from gateway.state.redis_client import GuardedRedis
from policies.cache.coalesce_layer import Coalesce, factory
from policies.cache.fleet_flight import PRE_CLAIM
from policies.cache.keys import CacheKey
from policies.cache.redis_store import Claim
from tests.policies.cache.support import ANSWER, body_of, drain, exchange, make_state
from tests.support.servers import RedisServer
from tests.support.until import until


class Gated:
    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        self.calls += 1
        await self.gate.wait()
        return UpstreamResponse(200, {"content-type": "application/json"}, body_of([orjson.dumps(ANSWER)]))


Fleet = tuple[AppState, Coalesce]  # the state and a coalescing policy on a real Redis


@pytest_asyncio.fixture
async def fleet(redis_server: RedisServer) -> AsyncIterator[Fleet]:
    """A coalescing policy with shared state: a real Redis, a key prefix of its own."""
    st = make_state(state={"backend": "redis", "redis_url": redis_server.url,
                           "key_prefix": f"c{secrets.token_hex(3)}:"})
    st.backend = GuardedRedis.from_config(st.config.state, time.monotonic)
    try:
        policy = await factory(st, st.config)
        assert policy is not None and policy.fleet is not None
        yield st, policy
    finally:
        await st.backend.close()


async def run(st, policy, up: Gated, n: int, **kw) -> list[Exchange]:  # type: ignore[no-untyped-def]
    exs = [exchange(st, **kw) for _ in range(n)]
    tasks = [asyncio.create_task(policy(ex, up)) for ex in exs]
    await asyncio.sleep(0)
    up.gate.set()
    for resp in await asyncio.gather(*tasks):
        assert orjson.loads(await drain(resp)) == ANSWER
    return exs


async def test_shares_one_call() -> None:
    """Five identical requests: one call, four marked coalesced."""
    st = make_state()
    up = Gated()
    exs = await run(st, await factory(st, st.config), up, 5)
    assert up.calls == 1
    assert sorted(ex.record.cache_result for ex in exs) == ["coalesced"] * 4 + ["none"]


async def test_bypass_and_nondeterministic_are_not_coalesced() -> None:
    """A client asking to skip the cache, or a non-deterministic request, goes upstream on its own."""
    st = make_state()
    policy = await factory(st, st.config)
    up = Gated()
    await run(st, policy, up, 3, headers={"x-gateway-cache": "bypass"})
    up2 = Gated()
    await run(st, policy, up2, 3, body={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    assert (up.calls, up2.calls) == (3, 3)


async def test_lookups_answered_out_of_order_do_not_wait_on_themselves(fleet: Fleet) -> None:
    """Two identical requests of one process: A's lookup took the fleet claim, B's found it held (by this
    process). B reaches single flight first and leads; A joins B's flight. B must not wait for an entry
    that only its own flight will write (the fleet wait is 10 s): one provider call, answered at once."""
    st, policy = fleet
    rt = policy.rt
    a, b = exchange(st), exchange(st)
    claim_key = rt.exact.claim_key(policy.keys.key(a))
    await st.backend.client.set(claim_key, rt.fleet_owner, px=10_000)  # what A's lookup did
    key = policy.keys.key(a)
    pre_a = Claim(claim_key, won=True, holder=None, of=key, life_ms=10_000)
    pre_b = Claim(claim_key, won=False, holder=rt.fleet_owner.encode(), of=key, life_ms=10_000)
    a.state.set(PRE_CLAIM, pre_a)
    b.state.set(PRE_CLAIM, pre_b)
    up = Gated()
    started = time.monotonic()
    first = asyncio.create_task(policy(b, up))
    await until(lambda: up.calls == 1)  # B leads: the provider is asked, not the fleet waited on
    second = asyncio.create_task(policy(a, up))
    up.gate.set()
    for resp in await asyncio.gather(first, second):
        assert orjson.loads(await drain(resp)) == ANSWER
    assert up.calls == 1 and time.monotonic() - started < 2.0
    assert a.record.cache_result == "coalesced" and pre_a.used and pre_b.used
    await st.backend.drain()
    assert await st.backend.client.get(claim_key) == b"done"  # B's flight released it for both


async def test_a_small_body_takes_its_key_inline_and_a_large_one_off_the_loop() -> None:
    """The flight's key is made inline below the thread hop's threshold (no ``key_off_loop`` coroutine per
    request, issue 21); the control: a body past it still goes through ``key_off_loop`` (its thread)."""
    st = make_state()
    policy = await factory(st, st.config)
    assert policy is not None
    off_loop = policy.keys.key_off_loop
    hops: list[int] = []

    async def counted(ex: Exchange) -> CacheKey:
        hops.append(len(ex.raw_body))
        return await off_loop(ex)

    policy.keys.key_off_loop = counted  # type: ignore[method-assign]
    await run(st, policy, Gated(), 2)
    assert hops == []
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 300_000}], "temperature": 0}
    up = Gated()
    await run(st, policy, up, 2, body=big)
    assert len(hops) == 2 and min(hops) > 256 * 1024 and up.calls == 1


async def test_flights_are_per_tenant_and_keyed_by_strings() -> None:
    """Two tenants' identical requests never share a flight (the flight key carries the namespace, as the
    ``CacheKey`` did); the control: the same tenant's do. The key holds the ``CacheKey``'s two strings, so
    a flight's dict operations hash no dataclass (issue 21)."""
    keys = [{"key": "ka", "tenant": "a"}, {"key": "kb", "tenant": "b"}]
    st = make_state(auth={"mode": "keys", "keys": keys})
    policy = await factory(st, st.config)
    assert policy is not None
    up = Gated()
    exs = [exchange(st, key=k) for k in ("ka", "kb", "ka")]
    tasks = [asyncio.create_task(policy(ex, up)) for ex in exs]
    await until(lambda: len(policy.rt.flights) == 2)
    fkeys = list(policy.rt.flights._flights)
    assert all(type(part) is str for fkey in fkeys for part in fkey[:2])
    assert {fkey[0] for fkey in fkeys} == {ex.request.namespace for ex in exs}
    up.gate.set()
    for resp in await asyncio.gather(*tasks):
        assert orjson.loads(await drain(resp)) == ANSWER
    assert up.calls == 2
    assert sorted(ex.record.cache_result for ex in exs) == ["coalesced", "none", "none"]


async def test_a_leader_whose_fleet_set_up_raises_leaves_no_flight_behind(fleet: Fleet) -> None:
    """The fleet claim's set-up raising after the flight was registered: the request fails, and the flight
    is gone, so the next identical request leads its own call instead of waiting on a leader that never
    calls. Control: a leader that set up fine is registered while its call is out."""
    st, policy = fleet
    set_up = policy._lead_fleet

    def broken(*args: object) -> None:
        raise RuntimeError("set-up failed")

    policy._lead_fleet = broken  # type: ignore[method-assign]
    up = Gated()
    try:
        await policy(exchange(st), up)
        raise AssertionError("the set-up's failure was swallowed")
    except RuntimeError as exc:
        assert str(exc) == "set-up failed"
    assert len(policy.rt.flights) == 0 and up.calls == 0
    policy._lead_fleet = set_up  # type: ignore[method-assign]
    task = asyncio.create_task(policy(exchange(st), up))
    await until(lambda: up.calls == 1)
    assert len(policy.rt.flights) == 1  # control: a leader's flight is registered while it calls
    up.gate.set()
    assert orjson.loads(await drain(await asyncio.wait_for(task, 5))) == ANSWER
