"""Prometheus metrics on a registry owned by the app (never the global one).

Label values come only from bounded sets: configured routes, upstreams and
tenants, models named in config (anything else is ``other``), status classes.
``bounded_model`` is the one place that decides which model names may become
label values, so random client input can never add series.

Every feature registers its metrics here through ``counter``/``histogram``/
``gauge`` (idempotent by name, so a config reload reuses the same series).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From 5 ms to 5 min: LLM latencies span four orders of magnitude.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
FAST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
OTHER = "other"


class Metrics:
    def __init__(self, models: Iterable[str] = (), registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._known_models: frozenset[str] = frozenset(models)
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        self.decisions = self.counter("gateway_policy_decisions_total", "Decisions taken by policies",
                                      ("policy", "decision"))

    def set_known_models(self, models: Iterable[str]) -> None:
        self._known_models = frozenset(models)

    def bounded_model(self, model: str) -> str:
        return model if model in self._known_models else OTHER

    def decision(self, policy: str, decision: str) -> None:
        self.decisions.labels(policy, decision).inc()

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return self._get(name, lambda: Counter(name, doc, labels, registry=self.registry))  # type: ignore[return-value]

    def gauge(self, name: str, doc: str, labels: Sequence[str] = (), multiprocess_mode: str = "livesum") -> Gauge:
        return self._get(name, lambda: Gauge(name, doc, labels, registry=self.registry,  # type: ignore[return-value]
                                             multiprocess_mode=multiprocess_mode))

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        return self._get(name, lambda: Histogram(name, doc, labels, registry=self.registry,  # type: ignore[return-value]
                                                 buckets=buckets))

    def _get(self, name: str, make):  # type: ignore[no-untyped-def]
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = make()
        return metric
