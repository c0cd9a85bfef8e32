"""Wait lists: everybody woken together; a cancelled waiter touches nobody else."""
from __future__ import annotations

import asyncio

import pytest

from policies.cache.waiters import release, wait_on
from tests.support.until import until


async def test_release_wakes_every_waiter_and_empties_the_list() -> None:
    waiters: list[asyncio.Future[None]] = []
    tasks = [asyncio.create_task(wait_on(waiters)) for _ in range(3)]
    await until(lambda: len(waiters) == 3)
    assert not any(t.done() for t in tasks)  # control: nobody is woken before the release
    release(waiters)
    await asyncio.gather(*tasks)
    assert waiters == []


async def test_a_cancelled_waiter_cancels_only_its_own_wait() -> None:
    waiters: list[asyncio.Future[None]] = []
    gone, kept = asyncio.create_task(wait_on(waiters)), asyncio.create_task(wait_on(waiters))
    await until(lambda: len(waiters) == 2)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert not kept.done()
    release(waiters)  # skips the cancelled future, wakes the other
    await kept


def test_release_of_nothing_is_a_no_op() -> None:
    release(None)
    empty: list[asyncio.Future[None]] = []
    release(empty)
    assert empty == []
