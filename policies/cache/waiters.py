"""Wait lists: futures woken together, made only when somebody waits.

A single flight (``singleflight``) has several things to wait for (its response, room under its byte
bound, the end of a direct read) and, in the common case, nobody waiting for any of them. A list of
futures, made on the first wait and let go once released, costs an idle flight nothing (an
``asyncio.Event`` each would cost an object per flight), and each waiter has a future of its own: a
cancelled waiter cancels only that, never anybody else's wait.
"""
from __future__ import annotations

import asyncio


async def wait_on(waiters: list[asyncio.Future[None]]) -> None:
    """Wait until ``release(waiters)``, with a future of one's own."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    await waiter


def release(waiters: list[asyncio.Future[None]] | None) -> None:
    """Wake every waiter (the caller then lets its list go: None until somebody waits again)."""
    if not waiters:  # the common case (nobody waits): no copy
        return
    pending = waiters[:]
    waiters.clear()
    for waiter in pending:
        if not waiter.done():
            waiter.set_result(None)
