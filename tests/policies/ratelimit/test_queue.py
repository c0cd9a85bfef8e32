"""The admission queue: FIFO within a priority, bounded, never past a give-up time, woken by releases."""
from __future__ import annotations

import asyncio

import pytest

from policies.ratelimit.model import NEVER, Verdict
from policies.ratelimit.queue import AdmissionQueue, Rejected
from tests.support.until import until


class Pool:
    """A stand-in for the buckets: ``free`` units; refusals predict a long wait so only pokes wake waiters."""

    def __init__(self, free: int, wait_s: float = 5.0) -> None:
        self.free = free
        self.wait_s = wait_s
        self.asked = 0

    async def attempt(self) -> Verdict:
        self.asked += 1
        if self.free > 0:
            self.free -= 1
            return Verdict(True)
        return Verdict(False, "rpm", self.wait_s)


def make_queue(max_queue: int = 10, depths: list[int] | None = None) -> AdmissionQueue:
    loop = asyncio.get_running_loop()
    return AdmissionQueue(max_queue, loop.time, on_depth=depths.append if depths is not None else None,
                          max_sleep_s=30.0)


async def test_admits_at_once_when_it_fits() -> None:
    """With room and nobody waiting, admission costs one bucket call and no wait."""
    pool, q = Pool(1), make_queue()
    admission = await q.admit(pool.attempt, asyncio.get_running_loop().time() + 1)
    assert admission.verdict.ok and admission.waited_s == 0.0 and admission.blocked == ""
    assert pool.asked == 1


async def test_fifo_and_priorities() -> None:
    """Waiters are admitted one release at a time: high before normal before low, FIFO within each."""
    depths: list[int] = []
    pool, q = Pool(0), make_queue(depths=depths)
    give_up = asyncio.get_running_loop().time() + 10
    order: list[str] = []

    async def one(name: str, rank: int) -> None:
        admission = await q.admit(pool.attempt, give_up, rank)
        assert admission.blocked == "rpm" and admission.waited_s > 0
        order.append(name)

    tasks = []
    for name, rank in (("n1", 1), ("l1", 2), ("n2", 1), ("h1", 0), ("n3", 1)):
        tasks.append(asyncio.create_task(one(name, rank)))
        queued = len(tasks)
        await until(lambda n=queued: q.depth == n, timeout=5.0, interval=0.001)
    asked_before = pool.asked
    for i in range(5):
        pool.free += 1
        q.poke()
        admitted = i + 1
        await until(lambda n=admitted: len(order) == n, timeout=5.0, interval=0.001)
    await asyncio.gather(*tasks)
    assert order == ["h1", "n1", "n2", "n3", "l1"]
    assert pool.asked - asked_before <= 10  # only the head asks: no thundering herd
    assert depths[-1] == 0 and max(depths) == 5


async def test_bounded_queue_rejects_when_full() -> None:
    """Beyond max_queue waiters a request is refused at once."""
    pool, q = Pool(0), make_queue(max_queue=1)
    give_up = asyncio.get_running_loop().time() + 10
    waiting = asyncio.create_task(q.admit(pool.attempt, give_up))
    await until(lambda: q.depth == 1, timeout=5.0, interval=0.001)
    with pytest.raises(Rejected) as info:
        await q.admit(pool.attempt, give_up)
    assert info.value.reason == "queue_full"
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert q.depth == 0


async def test_gives_up_at_its_deadline() -> None:
    """A waiter whose turn does not come leaves at its give-up time with a 'timeout'."""
    pool = Pool(0, wait_s=0.0)  # unknown wait (a concurrency slot): poll
    q = make_queue()
    loop = asyncio.get_running_loop()
    with pytest.raises(Rejected) as info:
        await q.admit(pool.attempt, loop.time() + 0.1)
    assert info.value.reason == "timeout"
    assert 0.09 <= info.value.waited_s < 1.0
    assert q.depth == 0


async def test_hopeless_requests_are_refused_at_once() -> None:
    """A predicted wait beyond the give-up time, or a request larger than the bucket, fails without
    waiting."""
    loop = asyncio.get_running_loop()
    q = make_queue()
    with pytest.raises(Rejected) as info:
        await q.admit(Pool(0, wait_s=5.0).attempt, loop.time() + 1.0)
    assert info.value.reason == "wait_too_long" and info.value.retry_after_s == 5.0
    with pytest.raises(Rejected) as info:
        await q.admit(Pool(0, wait_s=NEVER).attempt, loop.time() + 1.0)
    assert info.value.reason == "too_large"
    assert info.value.waited_s == 0.0


async def test_head_sleeps_the_predicted_wait() -> None:
    """Without any release, the head re-asks after the wait the bucket predicted."""
    pool, q = Pool(0, wait_s=0.05), make_queue()
    loop = asyncio.get_running_loop()

    async def refill() -> None:
        await until(lambda: pool.asked >= 1, timeout=5.0, interval=0.001)
        pool.free = 1  # capacity comes back without a poke, like a bucket refilling

    filler = asyncio.create_task(refill())
    admission = await q.admit(pool.attempt, loop.time() + 5)
    await filler
    assert admission.verdict.ok and 0.04 <= admission.waited_s < 2.0
