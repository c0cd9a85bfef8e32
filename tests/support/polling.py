"""Polling for tests: what they wait on (another process, a socket, a server's internals) sets no event."""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


async def poll_until(predicate: Callable[[], Any], interval_s: float) -> None:
    """Check ``predicate`` (sync, or returning an awaitable) every ``interval_s`` until it is truthy.

    Unbounded on purpose: callers wrap it in ``asyncio.timeout``.
    """
    while True:
        held = predicate()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        await asyncio.sleep(interval_s)
