"""The exposition function behind GET /metrics."""
from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from gateway.metrics_endpoint import render_metrics
from gateway.telemetry.metrics import Metrics


def test_render_metrics_is_the_app_registry_only() -> None:
    """The app's own registry is rendered (never the process-global one), in the text format."""
    metrics = Metrics(registry=CollectorRegistry())
    metrics.decision("retry", "retried")
    text = render_metrics(SimpleNamespace(metrics=metrics)).decode()  # type: ignore[arg-type]
    assert 'gateway_policy_decisions_total{decision="retried",policy="retry"} 1.0' in text
    assert "python_gc_objects_collected_total" not in text
