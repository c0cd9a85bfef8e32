"""Breakers shared through a real Redis: failures counted across processes, opens and closes broadcast."""
from __future__ import annotations

import secrets

from gateway.config_model import StateConfig
from gateway.state.redis_client import GuardedRedis
from policies.resilience.breaker import CircuitBreaker, CircuitOpen
from policies.resilience.config import CircuitBreakerConfig
from policies.resilience.shared import SharedBreakers
from tests.support.servers import RedisServer, free_port


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


CFG = CircuitBreakerConfig(consecutive_failures=3, min_calls=1000, open_s=10.0, half_open_probes=1)


def process(url: str, prefix: str, clock: Clock, wall: Clock,
            decisions: list[str] | None = None) -> tuple[CircuitBreaker, SharedBreakers]:
    """One worker's view: its own breaker for upstream ``up`` and its sharing."""
    backend = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=url, timeout_ms=5000), clock)
    breakers: dict[str, CircuitBreaker] = {}
    sink = decisions if decisions is not None else []
    shared = SharedBreakers(backend, prefix, breakers, clock, wall=wall, decision=sink.append)
    breaker = CircuitBreaker("up", CFG, clock, lambda: 0.0, on_change=shared.changed)
    breakers["up"] = breaker
    shared.attach(breaker)
    return breaker, shared


def fail(breaker: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        breaker.admit().settle("failure")


async def test_failures_count_across_processes_and_the_open_reaches_everyone(
        redis_server: RedisServer) -> None:
    prefix, clock, wall = f"t{secrets.token_hex(4)}:", Clock(), Clock(1.7e9)
    seen_a: list[str] = []
    seen_b: list[str] = []
    a, shared_a = process(redis_server.url, prefix, clock, wall, seen_a)
    b, shared_b = process(redis_server.url, prefix, Clock(5.0), wall, seen_b)  # another process, clock
    fail(a, 1)
    fail(b, 1)
    await shared_a.drain()
    await shared_b.drain()
    await shared_a.poll()
    assert a.state == b.state == "closed"  # control: 2 of 3 failures open nothing
    fail(a)
    await shared_a.drain()
    assert a.state == "open"  # the third failure in the fleet, though only A's second
    await shared_b.poll()
    assert b.state == "open"
    try:
        b.admit()
        raise AssertionError("B should reject at once")
    except CircuitOpen as exc:
        assert exc.headers["retry-after"] == "10"
    # A's probe succeeds after the open time: it closes, and so does B.
    clock.now += 11
    a.admit().settle("success")
    assert a.state == "closed"
    await shared_a.drain()
    await shared_b.poll()
    assert b.state == "closed"
    assert seen_a == ["fleet_trip"] and seen_b == ["fleet_open", "fleet_close"]  # every decision counted
    await shared_a.close()
    await shared_b.close()


async def test_a_success_resets_the_shared_count(redis_server: RedisServer) -> None:
    prefix, clock, wall = f"t{secrets.token_hex(4)}:", Clock(), Clock(1.7e9)
    a, shared_a = process(redis_server.url, prefix, clock, wall)
    b, shared_b = process(redis_server.url, prefix, clock, wall)
    fail(a, 2)
    await shared_a.drain()
    a.admit().settle("success")
    await shared_a.drain()
    fail(b, 2)
    await shared_b.drain()
    assert a.state == b.state == "closed"
    fail(b)  # positive control: the third in a row opens
    await shared_b.drain()
    assert b.state == "open"
    await shared_a.close()
    await shared_b.close()


async def test_redis_down_keeps_local_breakers() -> None:
    """Nothing listens: every shared call fails fast and the local breaker opens on its own failures."""
    clock = Clock()
    a, shared_a = process(f"redis://127.0.0.1:{free_port()}/0", "t:", clock, Clock(1.7e9))
    fail(a, 2)
    await shared_a.drain()
    assert a.state == "closed"
    fail(a)
    await shared_a.drain()
    assert a.state == "open"
    await shared_a.close()
