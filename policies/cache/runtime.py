"""The cache's long-lived parts, created once per process and kept across config reloads.

Stores, flights, the semantic index and the embedder live on
``state.components["cache"]``; a reload re-applies the size bounds to the
existing stores instead of dropping what they hold. Metrics are bound here once
(label children memoised) so the hot path does no label lookups.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.appstate import AppState
from gateway.config_model import Config
from gateway.exchange import StateKey
from gateway.telemetry.metrics import Children, gauge_slot
from policies.cache.fill import FillBudget
from policies.cache.fleet_flight import process_id
from policies.cache.memory_store import MemoryStore
from policies.cache.redis_store import AnswerStore
from policies.cache.singleflight import Flights

if TYPE_CHECKING:  # created by their layers, which import this module
    from policies.cache.batcher import Batcher
    from policies.cache.semantic_layer import SemanticParts

COMPONENT: StateKey[CacheRuntime] = StateKey("cache")
SIMILARITY_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOOL_MAX_ENTRIES = 10000


class CacheMetrics:
    def __init__(self, metrics: Any) -> None:
        self._m = metrics
        self.requests = metrics.counter("gateway_cache_requests_total", "Cache lookups by kind and result",
                                        ("kind", "result"))
        self.tokens_saved = metrics.counter("gateway_cache_tokens_saved_total",
                                            "Tokens not sent upstream thanks "
                                            "to the cache (the original answer's usage)", ("kind", "model"))
        self.entries = metrics.gauge("gateway_cache_entries", "Entries held in this process's cache",
                                     ("kind",), multiprocess_mode="livesum")
        self.bytes = metrics.gauge("gateway_cache_bytes", "Bytes held in this process's cache", ("kind",),
                                   multiprocess_mode="livesum")
        self.coalesced = metrics.counter("gateway_coalesced_requests_total",
                                         "Requests answered by another identical request's upstream call",
                                         ("route",))
        self.batch_size = metrics.histogram(
            "gateway_embedding_batch_size",
            "Inputs per upstream embeddings call after cache and micro-batching",
            buckets=BATCH_BUCKETS,
        )
        self.similarity = metrics.histogram("gateway_semantic_similarity",
                                            "Best cosine similarity found per semantic lookup",
                                            buckets=SIMILARITY_BUCKETS)
        self.redis_errors = metrics.counter("gateway_cache_redis_errors_total",
                                            "Cache calls to Redis that failed and were treated as misses")
        self._requests = Children(self.requests, loop=True)  # counted on the event loop only

    def request(self, kind: str, result: str, policy: str) -> None:
        """One lookup's result (every cacheable request): memoised fast slots, no ``Counter.inc`` checks."""
        self._requests.slot(kind, result).inc(1)
        self._m.decision(policy, result)

    def decision(self, policy: str, decision: str) -> None:
        self._m.decision(policy, decision)

    def saved(self, kind: str, model: str, tokens: int) -> None:
        if tokens > 0:
            self.tokens_saved.labels(kind, self._m.bounded_model(model)).inc(tokens)

    def gauge_hook(self, kind: str):  # type: ignore[no-untyped-def]
        # set on the loop only (stores, drops and evictions run there)
        entries = gauge_slot(self.entries.labels(kind), loop=True)
        size = gauge_slot(self.bytes.labels(kind), loop=True)

        def changed(n: int, nbytes: int) -> None:  # every store: the value slots, not ``Gauge.set``'s checks
            entries.set(float(n))
            size.set(float(nbytes))

        return changed


@dataclass(slots=True, kw_only=True)
class CacheRuntime:
    metrics: CacheMetrics
    exact: AnswerStore
    tool: AnswerStore
    flights: Flights = field(default_factory=Flights)
    fills: FillBudget = field(default_factory=FillBudget)  # bytes of answers being collected, all together
    semantic: SemanticParts | None = None  # the embedder and the index (semantic_layer.semantic_parts)
    embeddings: tuple[AnswerStore, Batcher] | None = None  # per-input store, micro-batcher (embeddings_layer)
    fleet_owner: str = field(default_factory=process_id)  # this process's value in fleet coalescing claims


def cache_runtime(state: AppState, config: Config) -> CacheRuntime:
    """The process's cache parts, created on first use and re-bounded on reload."""
    rt = state.components.get(COMPONENT)
    exact_cfg = config.cache.exact
    if rt is None:
        metrics = CacheMetrics(state.metrics)
        redis = state.backend  # the fleet's Redis, or the host's (workers)
        prefix = config.state.key_prefix

        def store(kind: str, entries: int, nbytes: int) -> AnswerStore:
            memory = MemoryStore(entries, nbytes, state.clock)
            memory.on_change = metrics.gauge_hook(kind)
            return AnswerStore(kind, memory, redis, prefix, on_redis_error=metrics.redis_errors.inc)

        rt = CacheRuntime(metrics=metrics, exact=store("exact", exact_cfg.max_entries, exact_cfg.max_bytes),
                          tool=store("tool", TOOL_MAX_ENTRIES, exact_cfg.max_bytes // 4),
                          fills=FillBudget(shared=redis is not None))
        state.components.set(COMPONENT, rt)
        state.closers.append(rt.exact.flush)
        state.closers.append(rt.tool.flush)
        state.closers.append(rt.fills.close)
    else:
        rt.exact.memory.max_entries, rt.exact.memory.max_bytes = exact_cfg.max_entries, exact_cfg.max_bytes
    return rt
