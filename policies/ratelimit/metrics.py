"""The admission-control metric families (names and labels are the issue's contract).

Label values are bounded: ``scope``, ``decision`` and a lease's ``outcome`` are fixed sets, ``limit``
is one of ``LIMIT_NAMES`` (a paused upstream counts under ``rpm``), and
``upstream`` is a configured upstream name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.telemetry.metrics import LATENCY_BUCKETS, Children, Metrics
from policies.ratelimit.model import COOLDOWN, LIMIT_NAMES

DECISIONS = ("allowed", "queued", "rejected", "shadow_rejected")


@dataclass(frozen=True, slots=True)
class RateLimitMetrics:
    metrics: Metrics
    decisions: Children  # scope, limit, decision
    wait: Children  # upstream
    depth: Children  # upstream
    reserved: Any  # Counter
    reconciled: Children  # direction: refund | charge
    policy_decisions: Children  # gateway_policy_decisions_total{policy, decision}
    leases: Children  # scope, outcome (``lease.OUTCOMES``)

    @classmethod
    def register(cls, m: Metrics) -> RateLimitMetrics:
        return cls(
            metrics=m,
            decisions=Children(m.counter("gateway_rate_limit_decisions_total",
                                         "Admission decisions per limit", ("scope", "limit", "decision"))),
            wait=Children(m.histogram("gateway_rate_limit_wait_seconds",
                                      "Time requests waited in an upstream's admission queue", ("upstream",),
                                      buckets=(0.0,) + LATENCY_BUCKETS)),
            depth=Children(m.gauge("gateway_rate_limit_queue_depth",
                                   "Requests waiting for an upstream's quota", ("upstream",))),
            reserved=m.counter("gateway_tokens_reserved_total",
                               "Tokens reserved before calls (prompt + max output)"),
            reconciled=Children(m.counter("gateway_tokens_reconciled_total",
                                          "Reservation corrections after the answer: refund (unused) "
                                          "or charge "
                                          "(excess)", ("direction",))),
            policy_decisions=Children(m.decisions),
            leases=Children(m.counter("gateway_rate_limit_lease_total",
                                      "Leases of shared rate-limit capacity: granted, refused (near "
                                      "exhaustion), spent (a request admitted from one), returned (the "
                                      "unused rest given back), voided (by a quota lesson)",
                                      ("scope", "outcome"))),
        )

    def decide(self, scope: str, limit: str, decision: str) -> None:
        self.decisions(scope, "rpm" if limit == COOLDOWN or limit not in LIMIT_NAMES else limit,
                       decision).inc()

    def allowed(self, scope: str, limit_names: tuple[str, ...]) -> None:
        """Every admitted request, once per limit: the children's fast slots (``Children.slot``)."""
        for name in limit_names:
            self.decisions.slot(scope, name, "allowed").inc(1)

    def policy(self, policy: str, decision: str) -> None:
        """``gateway_policy_decisions_total`` through memoised children (``Metrics.decision`` re-labels)."""
        self.policy_decisions.slot(policy, decision).inc(1)
