"""Start metrics, token accounting, tracing and the usage ledger for one app.

Called once from the app's lifespan, after the metrics registry, tokenizer and
state backend exist and before the policy chain is built (the usage and
tracing policies find what they need in ``state``). ``finalize_usage`` is a
finalizer, not a sink: it settles usage and cost on the record once, before
every sink (log line, metrics, trace, ledger, live stats) reads it, so the
sinks' order does not matter.
"""
from __future__ import annotations

import os

from gateway.appstate import AppState
from gateway.config_model import Config
from gateway.metrics_endpoint import start_metrics_server
from gateway.telemetry.metrics import RequestMetrics
from gateway.telemetry.metrics_sink import MetricsSink
from policies.ledger.setup import open_ledger
from policies.tracing.config import tracing_enabled
from policies.usage.accounting import make_finalizer


async def start_observability(st: AppState, config: Config) -> None:
    st.finalizers.append(make_finalizer(st))
    if config.metrics.enabled:
        families = RequestMetrics.register(st.metrics)
        st.request_metrics = families
        st.sinks.append(MetricsSink(st, families))
        await start_metrics_server(st, config)
    if tracing_enabled(config.tracing, os.environ):  # OpenTelemetry is imported only when it is on
        from policies.tracing.tracer import create_tracing  # noqa: PLC0415

        st.tracer = create_tracing(config, st.clock)
    if st.tracer is not None:
        st.sinks.append(st.tracer.finish)
        st.closers.append(st.tracer.close)
    await open_ledger(st, config)
