"""The in-process buckets, on an injected clock: refill, all-or-nothing, reconcile, slots, days, pauses."""
from __future__ import annotations

import math

import pytest

from policies.ratelimit.buckets import LimiterClock, MemoryBuckets
from policies.ratelimit.model import COOLDOWN, NEVER, Limit, LimitSet


class Clock:
    def __init__(self, t: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.t = t
        self.w = wall

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.w

    def advance(self, s: float) -> None:
        self.t += s
        self.w += s


def limits(*lims: Limit, cooldown: bool = False) -> LimitSet:
    return LimitSet("upstream", "u:test", "test", tuple(lims), lease_s=30.0, cooldown=cooldown)


RPM10 = Limit("rpm", "bucket", 10.0, 10 / 60)
TPM600 = Limit("tpm", "bucket", 600.0, 600 / 60, tokens=True)
CONC2 = Limit("concurrency", "slots", 2.0)
DAY1000 = Limit("daily_tokens", "day", 1000.0, tokens=True)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def buckets(clock: Clock) -> MemoryBuckets:
    return MemoryBuckets(LimiterClock(now=clock.now, wall=clock.wall))


def test_bucket_refills_continuously(buckets: MemoryBuckets, clock: Clock) -> None:
    """A full bucket lets its capacity go at once, then refills at capacity per minute, not all at once."""
    ls = limits(RPM10)
    assert all(buckets.acquire_now(ls, (1,), f"m{i}").ok for i in range(10))
    refused = buckets.acquire_now(ls, (1,), "m10")
    assert not refused.ok and refused.failed == "rpm"
    assert refused.wait_s == pytest.approx(6.0)
    clock.advance(5.9)
    assert not buckets.acquire_now(ls, (1,), "m11").ok
    clock.advance(0.1)
    assert buckets.acquire_now(ls, (1,), "m12").ok


def test_all_or_nothing(buckets: MemoryBuckets) -> None:
    """A request refused by its token bucket takes nothing from the request bucket or a slot."""
    ls = limits(RPM10, TPM600, CONC2)
    verdict = buckets.acquire_now(ls, (1, 700, 1), "big")
    assert not verdict.ok and verdict.failed == "tpm" and verdict.wait_s == NEVER
    verdict = buckets.acquire_now(ls, (1, 500, 1), "a")
    assert verdict.ok and verdict.levels == (9.0, 100.0, 1.0)
    refused = buckets.acquire_now(ls, (1, 200, 1), "b")
    assert not refused.ok and refused.failed == "tpm"
    assert refused.wait_s == pytest.approx(10.0)  # 100 missing tokens at 10 per second
    assert buckets.level(ls, "rpm") == 9.0
    assert buckets.level(ls, "concurrency") == 1.0


def test_refund_is_capped_and_charge_makes_debt(buckets: MemoryBuckets, clock: Clock) -> None:
    """Reconciling refunds unused tokens (never above capacity) and charges an excess as debt."""
    ls = limits(TPM600)
    assert buckets.acquire_now(ls, (500,), "a").ok
    buckets.settle_now(ls, (10_000,), "a")
    assert buckets.level(ls, "tpm") == 600.0
    assert buckets.acquire_now(ls, (600,), "b").ok
    buckets.settle_now(ls, (-300,), "b")  # the answer used 300 more than reserved
    assert buckets.level(ls, "tpm") == -300.0
    refused = buckets.acquire_now(ls, (100,), "c")
    assert not refused.ok and refused.wait_s == pytest.approx(40.0)
    clock.advance(40.0)
    assert buckets.acquire_now(ls, (100,), "c").ok


def test_slots_are_held_until_released_or_lease_ends(buckets: MemoryBuckets, clock: Clock) -> None:
    """Concurrency slots come back on release; a holder that never releases loses its slot at lease end."""
    ls = limits(CONC2)
    assert buckets.acquire_now(ls, (1,), "a").ok
    assert buckets.acquire_now(ls, (1,), "b").ok
    refused = buckets.acquire_now(ls, (1,), "c")
    assert not refused.ok and refused.failed == "concurrency" and refused.wait_s == 0.0
    buckets.settle_now(ls, (0,), "a")
    assert buckets.acquire_now(ls, (1,), "c").ok
    clock.advance(30.0)  # lease_s: "b" and "c" died without releasing
    assert buckets.acquire_now(ls, (1,), "d").ok
    assert buckets.level(ls, "concurrency") == 1.0


def test_day_budget_resets_at_utc_midnight(buckets: MemoryBuckets, clock: Clock) -> None:
    """daily_tokens is a per-UTC-day budget: refused until midnight, whole again after it."""
    clock.w = 86400.0 * 20000 + 86000.0  # 400 s before midnight
    ls = limits(DAY1000)
    assert buckets.acquire_now(ls, (900,), "a").ok
    buckets.settle_now(ls, (100,), "a")  # used 800
    refused = buckets.acquire_now(ls, (300,), "b")
    assert not refused.ok and refused.failed == "daily_tokens"
    assert refused.wait_s == pytest.approx(400.0)
    clock.advance(400.0)
    assert buckets.acquire_now(ls, (1000,), "b").ok


def test_pause_blocks_everything_until_it_ends(buckets: MemoryBuckets, clock: Clock) -> None:
    """A learned pause refuses even a request that fits, with the pause's remaining time as the wait."""
    ls = limits(RPM10, cooldown=True)
    buckets.learn_now(ls, "", None, 2.0)
    refused = buckets.acquire_now(ls, (1,), "a")
    assert not refused.ok and refused.failed == COOLDOWN and refused.wait_s == pytest.approx(2.0)
    buckets.learn_now(ls, "", None, 1.0)  # a shorter pause never shortens a longer one
    clock.advance(1.5)
    assert buckets.acquire_now(ls, (1,), "a").failed == COOLDOWN
    clock.advance(0.5)
    assert buckets.acquire_now(ls, (1,), "a").ok


def test_pause_left_by_key(buckets: MemoryBuckets, clock: Clock) -> None:
    """What routing reads: the seconds left of an entity's pause, 0 before, after, and for others."""
    ls = limits(RPM10, cooldown=True)
    assert buckets.cooldown_left_of("u:test") == 0.0
    buckets.learn_now(ls, "", None, 2.0)
    assert buckets.cooldown_left_of("u:test") == pytest.approx(2.0) and buckets.cooldown_left_of("u:x") == 0.0
    clock.advance(2.5)
    assert buckets.cooldown_left_of("u:test") == 0.0


def test_learning_only_shrinks(buckets: MemoryBuckets) -> None:
    """The provider's view lowers a bucket (even into debt) but never raises it."""
    ls = limits(RPM10)
    buckets.learn_now(ls, "rpm", 50.0, 0.0)
    assert buckets.level(ls, "rpm") == 10.0
    buckets.learn_now(ls, "rpm", -2.0, 0.0)
    assert buckets.level(ls, "rpm") == -2.0


def test_waits_are_converted_to_real_seconds(clock: Clock) -> None:
    """With a clock running 60x faster than real time, the wait handed back is in real seconds."""
    fast = MemoryBuckets(LimiterClock(now=clock.now, wall=clock.wall, speed=60.0))
    ls = limits(RPM10)
    for i in range(10):
        assert fast.acquire_now(ls, (1,), str(i)).ok
    assert fast.acquire_now(ls, (1,), "x").wait_s == pytest.approx(0.1)


def test_scaled_share_for_fallback() -> None:
    """The fallback share divides capacity and refill by the number of replicas, never below one."""
    ls = limits(RPM10, TPM600, CONC2).scaled(4)
    assert [lim.capacity for lim in ls.limits] == [2.5, 150.0, 1.0]
    assert math.isclose(ls.limits[1].rate, 600 / 60 / 4)
    assert ls.key == "u:test"
