"""``gateway_event_loop_lag_seconds``: how late the event loop runs a timer (issue 15).

A probe task asks to wake every ``interval_s`` and records how much later than asked it actually
ran. Anything that holds the loop (a tokenizer on a 4 MB prompt, a big JSON dump) shows up here
as lag, which every other stream's TTFT and inter-token latency pays.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from gateway.telemetry.metrics import Metrics

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INTERVAL_S = 0.25


def start_lag_probe(metrics: Metrics, clock: Callable[[], float],
                    interval_s: float = INTERVAL_S) -> Callable[[], Awaitable[None]]:
    """Start the probe on the running loop; returns the coroutine function that stops it."""
    histogram = metrics.histogram("gateway_event_loop_lag_seconds",
                                  "How late the event loop ran a timer (time the loop was held)",
                                  buckets=LAG_BUCKETS)

    async def probe() -> None:
        while True:
            asked = clock()
            await asyncio.sleep(interval_s)
            histogram.observe(max(0.0, clock() - asked - interval_s))

    task = asyncio.get_running_loop().create_task(probe(), name="loop-lag-probe")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop
