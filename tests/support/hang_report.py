"""When a test is about to hit pytest-timeout, print its pending asyncio tasks' stacks.

pytest-timeout prints the *threads'* stacks, which for an async test only show the loop idling in
``select``: the coroutine that waits forever is invisible there. Shortly before the timeout this
reporter's thread walks the pending ``asyncio.Task`` objects (the loop thread is then parked in
``select`` with the GIL released, so their frames are still) and prints where each one waits.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import sys
import threading
from collections.abc import Iterator

LEAD_S = 10.0  # report this long before the timeout


def pending_tasks_report() -> str:
    out = io.StringIO()
    tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    out.write(f"+++ {len(tasks)} pending asyncio tasks +++\n")
    for task in tasks:
        try:
            task.print_stack(limit=12, file=out)
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not fail the run
            out.write(f"{task!r}: no stack ({exc!r})\n")
    return out.getvalue()


@contextlib.contextmanager
def reporting_hangs(timeout_s: float) -> Iterator[None]:
    """Report pending tasks after ``timeout_s - LEAD_S`` seconds unless the block ended first."""
    if timeout_s <= LEAD_S:
        yield
        return
    timer = threading.Timer(timeout_s - LEAD_S, lambda: sys.stderr.write(pending_tasks_report()))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
