"""Resilience metrics: the families the issue names, registered once, with bounded labels."""
from __future__ import annotations

from gateway.errors import UpstreamFailure
from gateway.telemetry.metrics import Metrics
from policies.resilience.metrics import ResilienceMetrics


def test_families_and_reuse() -> None:
    """Every family exists; registering twice (a reload) reuses the same series."""
    metrics = Metrics()
    first, second = ResilienceMetrics(metrics), ResilienceMetrics(metrics)
    assert first.retries is second.retries
    first.retried("up", "503")
    first.child(first.fallbacks, "gpt-4o", "a", "b").inc()
    first.child(first.budget_exhausted, "up").inc()
    sample = metrics.registry.get_sample_value
    assert sample("gateway_retries_total", {"upstream": "up", "reason": "503"}) == 1
    assert sample("gateway_fallbacks_total", {"route": "gpt-4o", "from": "a", "to": "b"}) == 1
    assert sample("gateway_retry_budget_exhausted_total", {"upstream": "up"}) == 1
    assert sample("gateway_policy_decisions_total", {"policy": "retry", "decision": "retry"}) == 1


def test_timeouts_by_phase_only() -> None:
    """Timeout kinds count under their phase; other failure kinds are not timeouts."""
    metrics = Metrics()
    res = ResilienceMetrics(metrics)
    kinds = ("connect_timeout", "timeout_before_first_byte", "idle_timeout", "total_timeout", "connect_error")
    for kind in kinds:
        res.failure("up", UpstreamFailure(kind, kind))
    sample = metrics.registry.get_sample_value
    for phase in ("connect", "first_byte", "idle", "total"):
        assert sample("gateway_timeouts_total", {"upstream": "up", "phase": phase}) == 1
    res.state("up", "open", 2)
    assert sample("gateway_circuit_state", {"upstream": "up"}) == 2
