"""gateway.telemetry.loop_lag: a blocked loop shows up in gateway_event_loop_lag_seconds."""
from __future__ import annotations

import time

import pytest

from gateway.telemetry.loop_lag import start_lag_probe
from gateway.telemetry.metrics import Metrics
from tests.support.until import until


def samples(metrics: Metrics, suffix: str, le: str | None = None) -> float:
    labels = {"le": le} if le is not None else {}
    value = metrics.registry.get_sample_value("gateway_event_loop_lag_seconds" + suffix, labels)
    return value or 0.0


@pytest.mark.blocks_loop("blocks the loop for 150 ms on purpose, to see the probe measure it")
async def test_the_probe_measures_a_blocked_loop() -> None:
    metrics = Metrics()
    stop = start_lag_probe(metrics, time.monotonic, interval_s=0.01)
    await until(lambda: samples(metrics, "_count") >= 2)
    count, lag = samples(metrics, "_count"), samples(metrics, "_sum")
    end = time.monotonic() + 0.15
    while time.monotonic() < end:  # hold the loop (CPU), as a tokenizer on a huge prompt did
        pass
    await until(lambda: samples(metrics, "_count") > count)
    assert samples(metrics, "_sum") - lag >= 0.14  # that wake-up was ~150 ms late
    await stop()
