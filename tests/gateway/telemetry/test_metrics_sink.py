"""The metrics sink: one finished exchange updates exactly the families of the issue, with bounded labels."""
from __future__ import annotations

from array import array
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.exchange import Attempt, Exchange, Usage
from gateway.sse import StreamInspector
from gateway.telemetry.metrics import Metrics, RequestMetrics
from gateway.telemetry.metrics_sink import MetricsSink, attempt_outcome


def sample(m: Metrics, name: str, **labels: str) -> float:
    value = m.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def sink() -> MetricsSink:
    metrics = Metrics({"gpt-4o"}, registry=CollectorRegistry())
    return MetricsSink(SimpleNamespace(metrics=metrics),
                       RequestMetrics.register(metrics))  # type: ignore[arg-type]


def finished(make_exchange: Callable[..., Exchange], **kw: object) -> Exchange:
    fields: dict[str, object] = {"route_name": "main", "status": 200, "received_at": 10.0, "ended_at": 12.0,
                                     "first_token_at": 10.5, "upstream_s": 1.5, "waited_s": 0.25,
                                 "tenant": "acme"}
    fields.update(kw)
    return make_exchange(**fields)


def test_request_counts_durations_and_overhead(sink: MetricsSink,
                                               make_exchange: Callable[..., Exchange]) -> None:
    """Count, duration, TTFT and overhead (= duration - upstream - deliberate waits) are observed once."""
    m = sink.state.metrics
    sink(finished(make_exchange))
    assert sample(m, "gateway_requests_total", route="main", model="gpt-4o", upstream="mock",
                  status_class="2xx", cache="none") == 1
    assert sample(m, "gateway_request_duration_seconds_sum", route="main", model="gpt-4o",
                  upstream="mock") == 2.0
    assert sample(m, "gateway_time_to_first_token_seconds_sum", model="gpt-4o", upstream="mock",
                  source="upstream") == 0.5
    assert sample(m, "gateway_overhead_seconds_sum", route="main") == pytest.approx(0.25)


def test_unknown_model_and_odd_values_are_bounded(sink: MetricsSink,
                                                  make_exchange: Callable[..., Exchange]) -> None:
    """A client's model name, a strange cache result and a weird status all map to bounded values."""
    m = sink.state.metrics
    sink(finished(make_exchange, model="my-secret-model", upstream_model="my-secret-model", status=0,
                  cache_result="<script>"))
    assert sample(m, "gateway_requests_total", route="main", model="other", upstream="mock",
                  status_class="other", cache="other") == 1


def test_tokens_cost_and_estimated(sink: MetricsSink, make_exchange: Callable[..., Exchange]) -> None:
    """Tokens by kind, the estimated part separately, and cost per model and tenant."""
    m = sink.state.metrics
    ex = finished(make_exchange, usage=Usage(prompt=100, completion=20, cached_prompt=40, reasoning=5))
    ex.record.cost_usd = 0.5
    sink(ex)
    sink(finished(make_exchange, usage=Usage(prompt=10, completion=2, estimated=True)))
    labels = {"model": "gpt-4o", "upstream": "mock", "tenant": "acme"}
    assert [sample(m, "gateway_tokens_total", kind=k, **labels) for k in
            ("prompt", "completion", "cached_prompt", "reasoning")] == [110, 22, 40, 5]
    assert sample(m, "gateway_tokens_estimated_total", kind="prompt", **labels) == 10
    assert sample(m, "gateway_tokens_estimated_total", kind="completion", **labels) == 2
    assert sample(m, "gateway_cost_usd_total", model="gpt-4o", tenant="acme") == 0.5


def test_tokens_stay_per_tenant_and_a_kind_never_counted_shows_no_series(
        sink: MetricsSink, make_exchange: Callable[..., Exchange]) -> None:
    """The sink keeps the token slots with each series (issue 21: no lookup per kind per request): two tenants
    on the same route, model and status keep their own counts, and a kind with nothing counted makes no series
    (the control: one counted later appears then)."""
    m = sink.state.metrics
    for tenant, prompt in (("acme", 7), ("beta", 3), ("acme", 1)):
        sink(finished(make_exchange, tenant=tenant, usage=Usage(prompt=prompt, completion=1)))
    labels = {"model": "gpt-4o", "upstream": "mock"}
    assert sample(m, "gateway_tokens_total", kind="prompt", tenant="acme", **labels) == 8
    assert sample(m, "gateway_tokens_total", kind="prompt", tenant="beta", **labels) == 3
    assert sample(m, "gateway_tokens_total", kind="completion", tenant="acme", **labels) == 2
    exposed = generate_latest(m.registry)
    assert b'kind="reasoning"' not in exposed and b'kind="cached_prompt"' not in exposed
    sink(finished(make_exchange, tenant="beta", usage=Usage(prompt=1, reasoning=4)))
    assert sample(m, "gateway_tokens_total", kind="reasoning", tenant="beta", **labels) == 4
    assert b'kind="reasoning"' in generate_latest(m.registry)


def test_cache_answers_count_no_tokens(sink: MetricsSink, make_exchange: Callable[..., Exchange]) -> None:
    """A cached answer is a request with a cache-sourced TTFT, but no upstream tokens."""
    m = sink.state.metrics
    sink(finished(make_exchange, source="cache", cache_result="hit", usage=Usage(prompt=5, completion=5)))
    assert sample(m, "gateway_tokens_total", model="gpt-4o", upstream="mock", tenant="acme",
                  kind="prompt") == 0
    assert sample(m, "gateway_time_to_first_token_seconds_count", model="gpt-4o", upstream="mock",
                  source="cache") == 1


def test_inter_token_gaps_and_attempts(sink: MetricsSink, make_exchange: Callable[..., Exchange]) -> None:
    """Every inspector gap is one ITL observation; every attempt one upstream duration with a bounded
    outcome."""
    m = sink.state.metrics
    ex = finished(make_exchange)
    inspector = StreamInspector(lambda: 0.0)
    inspector.gaps = array("d", [0.01] * 20 + [0.2])
    ex.view = inspector
    ex.record.attempts = [Attempt(upstream="mock", model="gpt-4o", started=10.0, ended=10.3,
                                  outcome="http_503"),
                   Attempt(upstream="mock", model="gpt-4o", started=10.4, ended=12.0, outcome="ok")]
    sink(ex)
    assert sample(m, "gateway_inter_token_latency_seconds_count", model="gpt-4o", upstream="mock") == 21
    assert sample(m, "gateway_inter_token_latency_seconds_bucket", model="gpt-4o", upstream="mock",
                  le="0.01") == 20
    assert sample(m, "gateway_upstream_duration_seconds_count", upstream="mock", outcome="http_5xx") == 1
    assert sample(m, "gateway_upstream_duration_seconds_sum", upstream="mock",
                  outcome="ok") == pytest.approx(1.6)


@pytest.mark.parametrize(("raw", "label"), [("ok", "ok"), ("http_429", "http_429"), ("http_404", "http_4xx"),
                                            ("http_599", "http_5xx"), ("idle_timeout", "idle_timeout"),
                                            ("http_200", "other"), ("anything", "other")])
def test_attempt_outcome_labels(raw: str, label: str) -> None:
    """Attempt outcomes fold into a fixed vocabulary."""
    assert attempt_outcome(raw) == label


def test_attempt_dropped_unread_ends_when_the_next_starts(sink: MetricsSink,
                                                          make_exchange: Callable[..., Exchange]) -> None:
    """A retried 503 whose body was never read has no end; it is timed up to the retry and labelled by
    status."""
    ex = finished(make_exchange)
    ex.record.attempts = [Attempt(upstream="mock", model="gpt-4o", started=10.0, status=503),
                   Attempt(upstream="mock", model="gpt-4o", started=10.4, ended=12.0, outcome="ok",
                           status=200)]
    sink(ex)
    m = sink.state.metrics
    assert sample(m, "gateway_upstream_duration_seconds_sum", upstream="mock", outcome="http_5xx") == \
        pytest.approx(0.4)


def test_repeated_requests_add_up(sink: MetricsSink, make_exchange: Callable[..., Exchange]) -> None:
    """The children a label tuple reaches are kept: a second identical request adds to the same series, a
    request with other labels gets its own."""
    m = sink.state.metrics
    for _ in range(2):
        sink(finished(make_exchange))
    sink(finished(make_exchange, status=502, cache_result="miss"))
    labels = {"route": "main", "model": "gpt-4o", "upstream": "mock"}
    assert sample(m, "gateway_requests_total", status_class="2xx", cache="none", **labels) == 2
    assert sample(m, "gateway_requests_total", status_class="5xx", cache="miss", **labels) == 1
    assert sample(m, "gateway_request_duration_seconds_count", **labels) == 3
    assert sample(m, "gateway_overhead_seconds_count", route="main") == 3


def test_no_ttft_series_without_a_first_token(make_exchange: Callable[..., Exchange]) -> None:
    """A request that produced no token shows no TTFT series at all; the control, one that did, does."""
    metrics = Metrics({"gpt-4o"}, registry=CollectorRegistry())
    sink = MetricsSink(SimpleNamespace(metrics=metrics), RequestMetrics.register(metrics))  # type: ignore[arg-type]
    sink(finished(make_exchange, first_token_at=0.0))
    text = generate_latest(metrics.registry).decode()
    assert "gateway_time_to_first_token_seconds_count{" not in text
    sink(finished(make_exchange))
    assert "gateway_time_to_first_token_seconds_count{" in generate_latest(metrics.registry).decode()


def test_negative_reported_tokens_are_skipped(sink: MetricsSink,
                                              make_exchange: Callable[..., Exchange]) -> None:
    """A provider's negative token figure adds nothing (a counter never goes down); the positive ones of the
    same answer still count, and so does its cost."""
    m = sink.state.metrics
    ex = finished(make_exchange, usage=Usage(prompt=-7, completion=3))
    ex.record.cost_usd = 0.25
    sink(ex)
    labels = {"model": "gpt-4o", "upstream": "mock", "tenant": "acme"}
    assert sample(m, "gateway_tokens_total", kind="prompt", **labels) == 0
    assert sample(m, "gateway_tokens_total", kind="completion", **labels) == 3
    assert sample(m, "gateway_cost_usd_total", model="gpt-4o", tenant="acme") == 0.25
