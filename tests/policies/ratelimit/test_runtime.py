"""The limiter component: what it exposes to other features through ``state.components``."""
from __future__ import annotations

import asyncio
import secrets
from types import SimpleNamespace

import pytest

from gateway.components import QUOTA_PAUSED
from gateway.config import parse_config
from gateway.config_model import StateConfig
from gateway.exchange import LayerState
from gateway.state.redis_client import GuardedRedis
from gateway.telemetry.metrics import Metrics
from policies.ratelimit.buckets import LimiterClock, MemoryBuckets
from policies.ratelimit.config import RateLimitConfig
from policies.ratelimit.metrics import RateLimitMetrics
from policies.ratelimit.model import upstream_limits
from policies.ratelimit.redis_buckets import RedisBuckets
from policies.ratelimit.redis_scripts import APPLY
from policies.ratelimit.runtime import RateLimiter, limiter_for
from tests.support.redis_trips import round_trips
from tests.support.servers import RedisServer


def test_quota_pause_is_published_for_routing() -> None:
    """A provider 429 with Retry-After pauses the upstream; ``QUOTA_PAUSED`` tells how long, per upstream."""
    now = [100.0]
    cfg = parse_config({"upstreams": {"a": {"base_url": "http://127.0.0.1:9/v1", "rate_limit": {"rpm": 60}}},
                        "routes": [{"upstream": "a"}]}, {})
    st = SimpleNamespace(components=LayerState(), config=cfg, clock=lambda: now[0], metrics=Metrics(),
                         backend=None, closers=[], workers=1)
    limiter = limiter_for(st)  # type: ignore[arg-type]
    paused = st.components[QUOTA_PAUSED]
    ls = upstream_limits("a", cfg.upstreams["a"].rate_limit, 60.0)  # type: ignore[arg-type]
    assert ls is not None and paused("a") == 0.0
    grant = limiter.grant(ls, limiter.memory.acquire_now(ls, ls.amounts(0), "m"), ls.amounts(0), "m", 0, 0,
                          False)
    limiter.observe(grant, 429, {"retry-after": "30"})
    assert paused("a") == pytest.approx(30.0) and paused("b") == 0.0
    now[0] += 31
    assert paused("a") == 0.0


async def test_an_answer_teaches_redis_in_one_call_with_its_settlement(redis_server: RedisServer) -> None:
    """Remaining requests and tokens, a pause, and the settlement at the answer's end: one round trip,
    one script call, and both buckets lowered exactly to the provider's view."""
    loop = asyncio.get_running_loop()
    g = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=redis_server.url, timeout_ms=200),
                                 loop.time)
    clock = LimiterClock(now=loop.time)
    buckets = RedisBuckets(g, f"t{secrets.token_hex(4)}:", MemoryBuckets(clock))
    limiter = RateLimiter(buckets=buckets, metrics=RateLimitMetrics.register(Metrics()), clock=clock,
                          loop_time=loop.time)
    ls = upstream_limits("a", RateLimitConfig(rpm=60, tpm=6000, max_concurrency=2), 60.0)
    assert ls is not None
    try:
        amounts = ls.amounts(100)
        grant = limiter.grant(ls, await limiter.acquire(ls, amounts, "m"), amounts, "m", 100, 10, False)
        grant.seq = limiter.pending_of(ls).add(100)
        await g.client.script_load(APPLY)  # else the first call counts a NOSCRIPT round trip
        trips = round_trips(g)
        limiter.observe(grant, 429, {"x-ratelimit-remaining-requests": "3",
                                     "x-ratelimit-remaining-tokens": "2000", "retry-after": "2"})
        limiter.settle(grant, 40)
        await limiter.drain()
        assert trips == [["EVALSHA"]]
        rpm, tpm = (await g.client.hmget(buckets.keys(ls)[0], "rpm", "tpm"))
        # a 429: no refill during the pause (rates 0.9 rpm/s, 90 tpm/s at headroom); then 60 tokens refunded
        assert float(rpm) == pytest.approx(1 - 0.9 * 2) and float(tpm) == pytest.approx(0 - 90 * 2 + 60)
        assert 1900 <= await g.client.pttl(buckets.keys(ls)[2]) <= 2000
        assert await g.client.zcard(buckets.keys(ls)[1]) == 0  # the slot went back
    finally:
        await g.close()
