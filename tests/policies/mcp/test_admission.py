"""The server queue: FIFO waits instead of refusals, bounded in length and time; shadow mode."""
from __future__ import annotations

import asyncio

import pytest

from policies.mcp.admission import Admission, Refused
from policies.mcp.config import McpRateLimit
from policies.mcp.upstream import new_buckets
from policies.ratelimit.buckets import LimiterClock
from tests.support.until import until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def admission(clock: Clock | None = None, **kw: object) -> Admission:
    clock = clock or Clock()
    return Admission("mcp:s", McpRateLimit(**kw), new_buckets(LimiterClock(clock)))  # type: ignore[arg-type]


async def test_a_full_server_queues_in_order_then_admits() -> None:
    a = admission(max_concurrency=1)
    assert await a.enter(5.0) == "admitted"
    first = asyncio.create_task(a.enter(5.0))
    await until(lambda: a.waiting == 1)
    second = asyncio.create_task(a.enter(5.0))
    await until(lambda: a.waiting == 2)
    a.leave()
    assert await first == "queued" and not second.done()  # first in line goes first
    a.leave()
    assert await second == "queued" and a.waiting == 0 and a.inflight == 1


async def test_queue_full_and_queue_timeout_are_refused() -> None:
    a = admission(max_concurrency=1, max_queue=1, max_queue_wait_s=0.02)
    await a.enter(5.0)
    waiter = asyncio.create_task(a.enter(5.0))
    await until(lambda: a.waiting == 1)
    with pytest.raises(Refused, match="queue_full"):
        await a.enter(5.0)
    with pytest.raises(Refused, match="queue_timeout"):
        await waiter
    assert a.waiting == 0 and a.inflight == 1


async def test_wait_never_outlives_the_calls_deadline() -> None:
    a = admission(max_concurrency=1, max_queue_wait_s=60)
    await a.enter(5.0)
    with pytest.raises(Refused, match="queue_full"):  # no time left: refused at once, not queued
        await a.enter(0.0)


async def test_rpm_waits_for_the_bucket_to_refill() -> None:
    clock = Clock()
    a = admission(clock, rpm=60)  # one per second
    for _ in range(60):
        assert await a.enter(5.0) == "admitted"
        a.leave()
    waiter = asyncio.create_task(a.enter(5.0))
    await until(lambda: a.waiting == 1)
    clock.now = 1.0  # a token refilled; the waiter retries at its computed wait (1 s of real time at most)
    a._pulse()  # as a leave() would: the head of the line tries again now
    assert await waiter == "queued"


async def test_shadow_mode_counts_and_lets_through() -> None:
    a = admission(max_concurrency=1, enforce=False)
    assert await a.enter(5.0) == "admitted"
    assert await a.enter(5.0) == "shadow_concurrency"
    assert await a.enter(5.0) == "shadow_concurrency" and a.inflight == 3
