"""One way for tests to wait for something: poll a condition with a deadline, never a bare sleep.

``until(predicate)`` calls ``predicate`` (a plain function or one returning an
awaitable) every ``interval`` seconds until it is truthy, and fails the test with
``message`` if ``timeout`` seconds pass first. The predicate is always checked
once more at the deadline, so a condition that became true during the last sleep
still passes.
"""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

Predicate = Callable[[], Any | Awaitable[Any]]


async def _check(predicate: Predicate) -> bool:
    value = predicate()
    if inspect.isawaitable(value):
        value = await value
    return bool(value)


async def until(predicate: Predicate, timeout: float = 10.0,  # noqa: ASYNC109  fails with ``message``, not cancel
                interval: float = 0.01, message: str = "") -> None:
    """Wait until ``predicate()`` is truthy; ``AssertionError(message)`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _check(predicate):
        remaining = deadline - loop.time()
        if remaining <= 0:
            if await _check(predicate):  # one last look at the deadline
                return
            what = message or getattr(predicate, "__name__", "condition")
            raise AssertionError(f"not reached within {timeout:g} s: {what}")
        await asyncio.sleep(min(interval, remaining))
