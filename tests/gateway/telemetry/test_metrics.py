"""The metrics registry helpers: bounded labels, memoised children, batched histogram observation."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.telemetry.metrics import (
    OTHER,
    Children,
    HistogramSlot,
    LoopHistogramSlot,
    LoopValue,
    Metrics,
    RequestMetrics,
    bounded,
    counter_slot,
    gauge_slot,
    histogram_slot,
    observe_many,
    status_class,
)


def test_status_class_and_bounded() -> None:
    """Status classes are a fixed set; unknown values become `other`."""
    assert [status_class(s) for s in (200, 299, 404, 499, 502, 0, 42, 600)] == \
        ["2xx", "2xx", "4xx", "4xx", "5xx", OTHER, OTHER, OTHER]
    assert bounded("hit", frozenset({"hit"})) == "hit" and bounded("x" * 99, frozenset({"hit"})) == OTHER


def test_bounded_model() -> None:
    """Only configured models become label values."""
    m = Metrics({"gpt-4o"}, registry=CollectorRegistry())
    assert m.bounded_model("gpt-4o") == "gpt-4o" and m.bounded_model("gpt-4o-2024") == OTHER


def test_children_are_memoised() -> None:
    """The same label values give the same child object, created once."""
    m = Metrics(registry=CollectorRegistry())
    kids = Children(m.counter("t_total", "t", ("a",)))
    assert kids("x") is kids("x") and kids("x") is not kids("y")


def test_children_slots_are_memoised_and_fit_their_family() -> None:
    """``slot`` gives each label tuple one fast slot, made once: a histogram family's bisects (a
    ``HistogramSlot``), a counter family's bumps its value; both land in the family's own child."""
    m = Metrics(registry=CollectorRegistry())
    counters = Children(m.counter("s_total", "s", ("a",)))
    histograms = Children(m.histogram("s_seconds", "s", ("a",), (0.1, 1.0)))
    assert counters.slot("x") is counters.slot("x") and counters.slot("x") is not counters.slot("y")
    assert isinstance(histograms.slot("x"), HistogramSlot)
    assert not isinstance(counters.slot("x"), HistogramSlot)
    counters.slot("x").inc(2)
    histograms.slot("x").observe(0.5)
    assert counters("x")._value.get() == 2.0  # noqa: SLF001 - the child the public API reads
    assert m.registry.get_sample_value("s_seconds_bucket", {"a": "x", "le": "1.0"}) == 1.0
    assert m.registry.get_sample_value("s_seconds_bucket", {"a": "x", "le": "0.1"}) == 0.0


def test_observe_many_equals_observe() -> None:
    """Binned observation produces exactly the exposition of one observe per value."""
    values = [0.0, 0.001, 0.0011, 0.02, 0.02, 0.3, 7.0, 1e6, 0.005, 0.005, 0.0049]
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "h", ("l",), registry=r1, buckets=(0.001, 0.005, 0.02, 1.0))
    h2 = Histogram("h", "h", ("l",), registry=r2, buckets=(0.001, 0.005, 0.02, 1.0))
    for v in values:
        h1.labels("a").observe(v)
    observe_many(h2.labels("a"), values)
    strip = lambda text: [ln for ln in text.splitlines() if "_created" not in ln]
    assert strip(generate_latest(r1).decode()) == strip(generate_latest(r2).decode())


def test_request_metrics_register_is_idempotent() -> None:
    """Registering twice (a config reload) reuses the same families on the same registry."""
    m = Metrics(registry=CollectorRegistry())
    a, b = RequestMetrics.register(m), RequestMetrics.register(m)
    assert a.requests.family is b.requests.family
    names = {f.name for f in m.registry.collect()}
    assert {
        "gateway_requests",
        "gateway_request_duration_seconds",
        "gateway_time_to_first_token_seconds",
        "gateway_inter_token_latency_seconds",
        "gateway_upstream_duration_seconds",
        "gateway_overhead_seconds",
        "gateway_tokens",
        "gateway_inflight_requests",
        "gateway_policy_decisions",
        "gateway_cost_usd",
    } <= names


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [ln for ln in generate_latest(registry).decode().splitlines() if "_created" not in ln]


def test_slots_equal_the_client_calls() -> None:
    """A counter's and a histogram's fast slots give exactly the exposition of ``inc`` and ``observe``
    (values on bounds, between them, past the last one)."""
    values = [0.0, 0.001, 0.0011, 0.005, 0.3, 7.0, 1e6]
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    (c1, h1), (c2, h2) = [(Counter("c", "c", ("l",), registry=r), Histogram(
        "h", "h", ("l",), registry=r, buckets=(0.001, 0.005, 0.02, 1.0))) for r in (r1, r2)]
    counter, histogram = counter_slot(c2.labels("a")), histogram_slot(h2.labels("a"))
    assert isinstance(histogram, HistogramSlot)
    for v in values:
        c1.labels("a").inc(v)
        h1.labels("a").observe(v)
        counter.inc(v)
        histogram.observe(v)
    assert _exposition(r1) == _exposition(r2)


def test_loop_slots_equal_the_client_calls() -> None:
    """The slots of a ``loop`` family (updated on the event loop only: no lock) give exactly the exposition of
    ``inc``, ``observe`` and ``set``; the control: the same family without ``loop`` keeps the client's
    values as its slots."""
    values = [0.0, 0.001, 0.0011, 0.005, 0.3, 7.0, 1e6]
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    (c1, h1, g1), (c2, h2, g2) = [(Counter("c", "c", ("l",), registry=r), Histogram(
        "h", "h", ("l",), registry=r, buckets=(0.001, 0.005, 0.02, 1.0)), Gauge("g", "g", ("l",), registry=r))
        for r in (r1, r2)]
    counters, histograms = Children(c2, loop=True), Children(h2, loop=True)
    counter, histogram = counters.slot("a"), histograms.slot("a")
    gauge = gauge_slot(g2.labels("a"), loop=True)
    assert isinstance(counter, LoopValue) and isinstance(histogram, LoopHistogramSlot)
    assert isinstance(gauge, LoopValue)
    for v in values:
        c1.labels("a").inc(v)
        h1.labels("a").observe(v)
        g1.labels("a").set(v)
        counter.inc(v)
        histogram.observe(v)
        gauge.set(v)
    assert _exposition(r1) == _exposition(r2)
    assert c2.labels("a")._value.get() == c1.labels("a")._value.get()  # noqa: SLF001
    plain = Children(Counter("p", "p", ("l",), registry=CollectorRegistry()))
    assert plain.slot("a") is plain("a")._value  # noqa: SLF001 - the control: not a loop family


def test_request_families_and_decisions_use_loop_slots() -> None:
    """The request sink's families and the decision counter are ``loop`` families: every update of them is
    made on the event loop (the sink, the handler, the layers)."""
    m = Metrics(registry=CollectorRegistry())
    families = RequestMetrics.register(m)
    assert all(getattr(families, name).loop for name in families.__slots__)
    assert isinstance(families.duration.slot("r", "m", "u"), LoopHistogramSlot)
    m.decision("cache", "miss")
    assert m._decision.loop and isinstance(m._decision.slot("cache", "miss"), LoopValue)  # noqa: SLF001
    assert m.registry.get_sample_value("gateway_policy_decisions_total",
                                       {"policy": "cache", "decision": "miss"}) == 1


def test_slots_fall_back_to_the_child() -> None:
    """A child without the client's value slots is used as it is (the control: a real child has them)."""
    odd = SimpleNamespace(inc=lambda amount: None, observe=lambda value: None)
    assert counter_slot(odd) is odd and histogram_slot(odd) is odd
    registry = CollectorRegistry()
    histogram = Histogram("h", "h", ("l",), registry=registry).labels("a")
    counter = Counter("c", "c", ("l",), registry=registry).labels("a")
    assert histogram_slot(histogram) is not histogram and counter_slot(counter) is not counter


def test_decisions_are_counted() -> None:
    """``Metrics.decision`` counts each (policy, decision) pair in its own series."""
    m = Metrics(registry=CollectorRegistry())
    for _ in range(3):
        m.decision("cache", "miss")
    m.decision("cache", "hit")
    value = m.registry.get_sample_value
    assert value("gateway_policy_decisions_total", {"policy": "cache", "decision": "miss"}) == 3
    assert value("gateway_policy_decisions_total", {"policy": "cache", "decision": "hit"}) == 1


def test_gauge_slot_equals_set_and_keeps_stamped_gauges_on_the_child() -> None:
    """A gauge's value slot gives the exposition of ``Gauge.set``; the control: a child without the client's
    slot, or one whose values are stamped (``mostrecent`` in multiprocess mode), is used as it is."""
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    g1, g2 = (Gauge("g", "g", ("l",), registry=r) for r in (r1, r2))
    slot = gauge_slot(g2.labels("a"))
    assert slot is not g2.labels("a")
    for v in (3, 0, 12.5, 7):
        g1.labels("a").set(v)
        slot.set(float(v))
    assert _exposition(r1) == _exposition(r2)
    odd = SimpleNamespace(set=lambda value: None)
    stamped = SimpleNamespace(_value=SimpleNamespace(set=lambda value: None), _is_most_recent=True)
    assert gauge_slot(odd) is odd and gauge_slot(stamped) is stamped


def _multiprocess_exposition(path: str) -> list[str]:
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return sorted(ln for ln in generate_latest(registry).decode().splitlines() if not ln.startswith("#"))


def test_multiprocess_slots_write_what_the_client_writes(tmp_path: Any, monkeypatch: Any) -> None:
    """``--workers N``: counter and histogram slots on multiprocess values are ``MmapSlot``s (no pid check
    per increment), and the mmap files they write expose exactly what the client's own ``inc``/``observe``
    give, read back by the collector any worker's ``/metrics`` uses; the client's in-object value agrees."""
    from prometheus_client import values

    from gateway.telemetry.metrics import MmapSlot, value_slot

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    plain, fast = CollectorRegistry(), CollectorRegistry()
    made = [(Counter(f"c{n}", "c", ("l",), registry=r), Histogram(f"h{n}", "h", ("l",), registry=r,
             buckets=(0.001, 0.005, 0.02, 1.0))) for n, r in (("1", plain), ("2", fast))]
    (c1, h1), (c2, h2) = made
    counter, histogram = counter_slot(c2.labels("a")), histogram_slot(h2.labels("a"))
    assert isinstance(counter, MmapSlot) and isinstance(histogram, HistogramSlot)
    values_seen = [0.0, 0.001, 0.0011, 0.005, 0.3, 7.0, 1e6] * 50  # enough keys to grow the mmap file
    for v in values_seen:
        c1.labels("a").inc(v)
        h1.labels("a").observe(v)
        counter.inc(v)
        histogram.observe(v)
    mapped = counter._file._m  # noqa: SLF001
    for n in range(3000):  # more series after the slots were made: the file is remapped, slots keep writing
        Counter(f"grow{n}", "g", registry=fast).inc()
    assert counter._file._m is not mapped  # noqa: SLF001 - the control that the remap happened
    counter.inc(1.5)
    c1.labels("a").inc(1.5)
    exposed = _multiprocess_exposition(str(tmp_path))
    mine = [ln.replace("c2", "c1").replace("h2", "h1") for ln in exposed if ln.startswith(("c2", "h2"))]
    theirs = [ln for ln in exposed if ln.startswith(("c1", "h1"))]
    assert mine == theirs and any(ln.startswith("h1_bucket") for ln in theirs)
    assert c2.labels("a")._value.get() == c1.labels("a")._value.get()  # noqa: SLF001
    g1, g2 = (Gauge(f"g{n}", "g", ("l",), registry=r, multiprocess_mode="livesum") for n, r in (("1", plain),
                                                                                            ("2", fast)))
    gauge = gauge_slot(g2.labels("a"))
    assert isinstance(gauge, MmapSlot)
    g1.labels("a").set(7.5)
    gauge.set(7.5)
    exposed = _multiprocess_exposition(str(tmp_path))
    assert [ln.replace("g2", "g1") for ln in exposed if ln.startswith("g2")] == \
        [ln for ln in exposed if ln.startswith("g1")] != []
    # a loop family's slots on multiprocess values are the same: they must write the mmap file
    assert isinstance(counter_slot(c2.labels("b"), loop=True), MmapSlot)
    assert type(histogram_slot(h2.labels("b"), loop=True)) is HistogramSlot
    single = CollectorRegistry()
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)
    control = Counter("c3", "c", ("l",), registry=single).labels("a")._value  # noqa: SLF001
    assert value_slot(control) is control  # control: a single-process value is its own slot
