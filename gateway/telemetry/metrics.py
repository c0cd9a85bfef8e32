"""Prometheus metrics on a registry owned by the app (never the global one).

Label values come only from bounded sets: configured routes, upstreams and
tenants, models named in config (anything else is ``other``), status classes.
``bounded_model`` is the one place that decides which model names may become
label values, so random client input can never add series.

Every feature registers its metrics here through ``counter``/``histogram``/
``gauge`` (idempotent by name, so a config reload reuses the same series).
"""
from __future__ import annotations

import struct
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.values import MutexValue

# From 5 ms to 5 min: LLM latencies span four orders of magnitude.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
                   120.0, 300.0)
FAST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
# Inter-token gaps are milliseconds to a few seconds.
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Gateway overhead: tens of microseconds normally; the tail shows tokenising huge prompts or a stalled loop.
OVERHEAD_BUCKETS = FAST_BUCKETS + (0.25, 1.0)
OTHER = "other"
# How a gauge's per-worker values combine under multi-process metrics (prometheus_client's Gauge modes).
GaugeMode = Literal["all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum",
                    "mostrecent", "livemostrecent"]
_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)
_LOCK_TYPE = type(threading.Lock())
_PACK_VALUE = struct.Struct("dd").pack  # a multiprocess value's record in its mmap file: value, timestamp


class Metrics:
    def __init__(self, models: Iterable[str] = (), registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._known_models: frozenset[str] = frozenset(models)
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        self.decisions = self.counter("gateway_policy_decisions_total", "Decisions taken by policies",
                                      ("policy", "decision"))
        # Several decisions per request, all counted on the event loop: no labels() call, no Counter.inc
        # checks, no lock each (``Children.slot`` of a ``loop`` family).
        self._decision = Children(self.decisions, loop=True)
        self._decision_slots: dict[tuple[str, str], Any] = {}  # the same slots, reached without a call

    def set_known_models(self, models: Iterable[str]) -> None:
        self._known_models = frozenset(models)

    def bounded_model(self, model: str) -> str:
        return model if model in self._known_models else OTHER

    def decision(self, policy: str, decision: str) -> None:
        slot = self._decision_slots.get((policy, decision))
        if slot is None:
            slot = self._decision_slots[policy, decision] = self._decision.slot(policy, decision)
        slot.inc(1)

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return self._get(name, Counter, lambda: Counter(name, doc, labels, registry=self.registry))

    def gauge(self, name: str, doc: str, labels: Sequence[str] = (),
              multiprocess_mode: GaugeMode = "livesum") -> Gauge:
        return self._get(name, Gauge, lambda: Gauge(name, doc, labels, registry=self.registry,
                                                    multiprocess_mode=multiprocess_mode))

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        return self._get(name, Histogram, lambda: Histogram(name, doc, labels, registry=self.registry,
                                                            buckets=buckets))

    def _get(self, name: str, kind: type[_Metric], make: Callable[[], _Metric]) -> _Metric:
        metric = self._metrics.get(name)
        if metric is None:
            created = self._metrics[name] = make()
            return created
        if not isinstance(metric, kind):
            raise TypeError(f"metric {name!r} is a {type(metric).__name__}, not a {kind.__name__}")
        return metric


def status_class(status: int) -> str:
    """``2xx``..``5xx``; anything outside 100..599 (0: no response at all) is ``other``."""
    return f"{status // 100}xx" if 100 <= status < 600 else OTHER


def bounded(value: str, allowed: frozenset[str]) -> str:
    """``value`` when it is one of ``allowed``, else ``other``: the guard for every label from input."""
    return value if value in allowed else OTHER


class Children:
    """Label children of one metric family, memoised.

    ``family.labels(...)`` validates and takes a lock on every call (~2 us);
    the request sink touches ten families per request, so it keeps the
    children it has seen. The memo is as bounded as the label values are.

    ``loop``: every update of the family's values goes through the event loop's thread (the request sinks,
    the handler, the layers), so its slots may skip the client's per-value lock (``LoopValue``).
    """

    __slots__ = ("_memo", "_slots", "family", "loop")

    def __init__(self, family: Any, *, loop: bool = False) -> None:
        self.family = family
        self.loop = loop
        self._memo: dict[tuple[str, ...], Any] = {}
        self._slots: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._memo.get(labels)
        if child is None:
            child = self._memo[labels] = self.family.labels(*labels)
        return child

    def slot(self, *labels: str) -> Any:
        """The child's fast update slot, memoised: ``counter_slot`` of a counter (``inc`` of an amount >= 0),
        ``histogram_slot`` of a histogram (``observe``)."""
        found = self._slots.get(labels)
        if found is None:
            make = histogram_slot if isinstance(self.family, Histogram) else counter_slot
            found = self._slots[labels] = make(self(*labels), loop=self.loop)
        return found


def counter_slot(child: Any, *, loop: bool = False) -> Any:
    """What a counter child's ``inc(amount)`` ends in, for a caller that passes amounts >= 0 itself.

    ``Counter.inc`` checks that its child may be observed, that the amount is not negative and whether an
    exemplar came (~0.55 us); its value slot's ``inc`` only takes the value's lock (or, in multiprocess mode,
    writes the value to its mmap file: ``MmapSlot``): ~0.2 us. Falls back to the child if a client renames
    the slot. ``loop``: see ``LoopValue``.
    """
    value = getattr(child, "_value", None)
    return value_slot(value, loop=loop) if value is not None and callable(getattr(value, "inc", None)) \
        else child


class MmapSlot:
    """``inc`` of one multiprocess value (``--workers N``: every worker writes its values to its own mmap
    file, which any worker's ``/metrics`` reads), without the client's per-call pid check.

    prometheus_client's ``MmapedValue.inc`` calls ``os.getpid()`` on every increment (a system call: glibc
    no longer caches it) to notice a fork, then looks the key's offset up again: ~1.0 us against ~0.2 us for
    a single-process value, and ~20 increments a request. Slots are made lazily in the serving worker (after
    any fork), so the pid cannot change under one. Same lock as the client's (a thread using
    ``child.inc`` on the same value cannot lose an update), same record (value, timestamp 0), same value
    kept in the client's object; the mmap is looked up per call (the client replaces it when it grows).
    """

    __slots__ = ("_file", "_lock", "_pos", "_value")

    def __init__(self, value: Any, file: Any, pos: int, lock: Any) -> None:
        self._value, self._file, self._pos, self._lock = value, file, pos, lock

    def inc(self, amount: float) -> None:
        value, pos = self._value, self._pos
        with self._lock:
            total = value._value = value._value + amount
            value._timestamp = 0.0
            self._file._m[pos:pos + 16] = _PACK_VALUE(total, 0.0)

    def set(self, new: float) -> None:
        """A gauge's ``set`` (not a ``mostrecent`` one: those stamp their values and keep the child's)."""
        value, pos = self._value, self._pos
        with self._lock:
            value._value = new
            value._timestamp = 0.0
            self._file._m[pos:pos + 16] = _PACK_VALUE(new, 0.0)


class LoopValue:
    """``inc``/``set`` of one single-process value (the client's ``MutexValue``) whose every update is made on
    the event loop's thread: the value's lock orders writers of several threads, and there is one, so it is
    not taken (a reader gets one float either way). 2.7k -> 0.7k instructions an increment (valgrind, in
    process): ~20 a request with the default config (issue 21)."""

    __slots__ = ("_value",)

    def __init__(self, value: MutexValue) -> None:
        self._value = value

    def inc(self, amount: float) -> None:
        self._value._value += amount

    def set(self, new: float) -> None:
        self._value._value = new


def value_slot(value: Any, *, loop: bool = False) -> Any:
    """A multiprocess value's ``MmapSlot``; a single-process one's ``LoopValue`` when ``loop`` (its updates
    are all made on the event loop); any other value (or one whose internals are not the client's known
    ones) is its own slot."""
    if loop and type(value) is MutexValue and isinstance(getattr(value, "_value", None), float):
        return LoopValue(value)
    file, key = getattr(value, "_file", None), getattr(value, "_key", None)
    positions = getattr(file, "_positions", None)
    if file is None or not isinstance(positions, dict) or key not in positions or not hasattr(file, "_m") \
            or not hasattr(value, "_timestamp"):
        return value
    lock = next((cell.cell_contents for cell in getattr(type(value).inc, "__closure__", None) or ()
                 if isinstance(cell.cell_contents, _LOCK_TYPE)), None)
    return value if lock is None else MmapSlot(value, file, positions[key], lock)


def gauge_slot(child: Any, *, loop: bool = False) -> Any:
    """What a gauge child's ``set(value)`` ends in, for a caller that passes floats itself: ``Gauge.set``
    checks that its child may be observed first (~0.5 us, twice per cache store for the entries and bytes
    gauges). A ``mostrecent`` multiprocess gauge stamps its values, so it keeps its child's ``set``; so does
    a client whose value slot has another name."""
    value = getattr(child, "_value", None)
    if value is None or getattr(child, "_is_most_recent", True) or not callable(getattr(value, "set", None)):
        return child
    return value_slot(value, loop=loop)


class HistogramSlot:
    """``observe(value)`` of one histogram child on the client's value slots: the bucket found by bisection
    (the client scans its bounds), then the bucket and the sum bumped; the same slots ``observe_many`` uses,
    so the exposition is that of ``child.observe``."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, bounds: Sequence[float], buckets: Sequence[Any], total: Any) -> None:
        self._bounds, self._buckets, self._sum = bounds, buckets, total

    def observe(self, value: float) -> None:
        self._buckets[bisect_left(self._bounds, value)].inc(1)
        self._sum.inc(value)


class LoopHistogramSlot:
    """``HistogramSlot`` on single-process values updated on the event loop only (``LoopValue``): the bucket
    and the sum bumped in place, no call each. 6.7k -> 1.9k instructions an observation."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, bounds: Sequence[float], buckets: Sequence[MutexValue], total: MutexValue) -> None:
        self._bounds, self._buckets, self._sum = bounds, buckets, total

    def observe(self, value: float) -> None:
        self._buckets[bisect_left(self._bounds, value)]._value += 1
        self._sum._value += value


def histogram_slot(child: Any, *, loop: bool = False) -> Any:
    """A ``HistogramSlot`` of ``child`` (a ``LoopHistogramSlot`` when ``loop`` and its values are the
    single-process ones), or the child itself if the client's slots are not there."""
    bounds, buckets = getattr(child, "_upper_bounds", None), getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets) or not bounds \
            or bounds[-1] != float("inf"):
        return child
    if loop and all(isinstance(slot, LoopValue) for slot in (*map(_loop_value, buckets), _loop_value(total))):
        return LoopHistogramSlot(bounds, list(buckets), total)
    return HistogramSlot(bounds, [value_slot(bucket) for bucket in buckets], value_slot(total))


def _loop_value(value: Any) -> Any:
    return value_slot(value, loop=True)


def observe_many(child: Any, values: Sequence[float]) -> None:
    """Observe many values in one histogram child (inter-token gaps: one per streamed token).

    ``observe`` costs ~1.5 us per call; a 2,000-token stream would spend 3 ms of
    loop time in its sink. Values are binned first and each bucket is bumped
    once. This uses the client's value slots (``_buckets``/``_sum``), which are
    the same objects in multiprocess mode; if a future client renames them we
    fall back to plain ``observe``.
    """
    bounds = getattr(child, "_upper_bounds", None)
    if len(values) < 8 or bounds is None or not hasattr(child, "_buckets"):
        for value in values:
            child.observe(value)
        return
    counts = [0] * len(bounds)  # the last bound is +Inf, so every value lands somewhere
    for value in values:
        counts[bisect_left(bounds, value)] += 1
    slots = child._buckets
    for index, count in enumerate(counts):
        if count:
            slots[index].inc(count)
    child._sum.inc(sum(values))


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    """The per-request families of the issue, with memoised children (names and labels are a contract)."""

    requests: Children
    duration: Children
    ttft: Children
    inter_token: Children
    upstream: Children
    overhead: Children
    tokens: Children
    tokens_estimated: Children
    inflight: Children
    cost: Children

    @classmethod
    def register(cls, m: Metrics) -> RequestMetrics:
        """Create (or reuse, by name) the families on ``m``'s registry. Their every update is made on the
        event loop (the request sink, the handler's in-flight count): loop slots (``LoopValue``)."""
        return cls(
            requests=_on_loop(
                m.counter(
                    "gateway_requests_total",
                    "Requests answered, by outcome",
                    ("route", "model", "upstream", "status_class", "cache"),
                )
            ),
            duration=_on_loop(
                m.histogram(
                    "gateway_request_duration_seconds",
                    "Whole request as the client saw it",
                    ("route", "model", "upstream"),
                )
            ),
            ttft=_on_loop(
                m.histogram(
                    "gateway_time_to_first_token_seconds",
                    "From request arrival to the first content or tool-call delta sent",
                    ("model", "upstream", "source"),
                )
            ),
            inter_token=_on_loop(
                m.histogram(
                    "gateway_inter_token_latency_seconds",
                    "Gaps between content chunks",
                    ("model", "upstream"),
                    buckets=GAP_BUCKETS,
                )
            ),
            upstream=_on_loop(
                m.histogram(
                    "gateway_upstream_duration_seconds",
                    "One upstream attempt, start to end",
                    ("upstream", "outcome"),
                )
            ),
            overhead=_on_loop(
                m.histogram(
                    "gateway_overhead_seconds",
                    "Time spent in the gateway itself (not upstream, not deliberate waits)",
                    ("route",),
                    buckets=OVERHEAD_BUCKETS,
                )
            ),
            tokens=_on_loop(
                m.counter(
                    "gateway_tokens_total",
                    "Tokens processed by upstreams (reported or estimated)",
                    ("model", "upstream", "tenant", "kind"),
                )
            ),
            tokens_estimated=_on_loop(
                m.counter(
                    "gateway_tokens_estimated_total",
                    "The part of gateway_tokens_total counted by the gateway's tokenizer "
                    "(no usage from the provider)",
                    ("model", "upstream", "tenant", "kind"),
                )
            ),
            inflight=_on_loop(m.gauge("gateway_inflight_requests", "Requests being served", ("upstream",))),
            cost=_on_loop(
                m.counter("gateway_cost_usd_total", "Cost from the pricing table, USD", ("model", "tenant"))
            ),
        )


def _on_loop(family: Any) -> Children:
    return Children(family, loop=True)
