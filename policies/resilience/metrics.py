"""The resilience metrics, registered once on the app's ``Metrics`` (reloads reuse them).

Label values are configured upstream/tool/route names and fixed reason sets only.
Children are memoised: ``family.labels(...)`` validates and locks on every call.
"""
from __future__ import annotations

from typing import Any

from gateway.errors import UpstreamFailure

TIMEOUT_PHASE = {
    "connect_timeout": "connect",
    "timeout_before_first_byte": "first_byte",
    "idle_timeout": "idle",
    "total_timeout": "total",
}


class ResilienceMetrics:
    def __init__(self, metrics: Any) -> None:
        self._metrics = metrics
        self.retries = metrics.counter("gateway_retries_total", "Retries of upstream calls, by reason",
                                       ("upstream", "reason"))
        self.budget_exhausted = metrics.counter(
            "gateway_retry_budget_exhausted_total", "Retries refused: the upstream's retry budget was spent",
            ("upstream",))
        self.circuit_state = metrics.gauge(
            "gateway_circuit_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)", ("upstream",),
            multiprocess_mode="livemax")
        self.transitions = metrics.counter("gateway_circuit_transitions_total", "Circuit breaker transitions",
                                           ("upstream", "to"))
        self.fallbacks = metrics.counter(
            "gateway_fallbacks_total", "Requests failed over to a fallback upstream", ("route", "from", "to"))
        self.timeouts = metrics.counter("gateway_timeouts_total", "Upstream timeouts, by phase",
                                        ("upstream", "phase"))
        self.hedges = metrics.counter(
            "gateway_hedges_total", "Hedged first tokens: a late primary raced against the next target",
            ("route", "outcome"))
        self.continuations = metrics.counter(
            "gateway_continuations_total", "Broken streams: continued by a fallback, or why not",
            ("route", "outcome"))
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, family: Any, *labels: str) -> Any:
        key = (id(family), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def decision(self, policy: str, decision: str) -> None:
        """``gateway_policy_decisions_total`` through ``Metrics.decision``'s fast slots (the breaker decides
        on every request)."""
        self._metrics.decision(policy, decision)

    def retried(self, upstream: str, reason: str) -> None:
        self.child(self.retries, upstream, reason).inc()
        self.decision("retry", "retry")

    def failure(self, upstream: str, failure: UpstreamFailure) -> None:
        """Count a timeout, whatever phase it hit (other failure kinds are not timeouts)."""
        phase = TIMEOUT_PHASE.get(failure.kind)
        if phase is not None:
            self.child(self.timeouts, upstream, phase).inc()

    def state(self, upstream: str, to: str, value: int) -> None:
        self.child(self.circuit_state, upstream).set(value)
        self.child(self.transitions, upstream, to).inc()
