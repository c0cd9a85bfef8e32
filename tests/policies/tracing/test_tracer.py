"""Tracing: off by default, W3C context continued and propagated, GenAI attributes,
content only when asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import parse_config
from gateway.exchange import Attempt, Exchange, Usage
from policies.tracing.config import tracing_enabled
from policies.tracing.keys import ATTEMPTS_KEY
from policies.tracing.tracer import (
    SPAN_KEY,
    TRACER_KEY,
    Tracing,
    create_tracing,
    record_span,
)
from tests.support.servers import gateway_config

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def tracing(**overrides: Any) -> Tracing:
    cfg = parse_config(gateway_config("http://upstream.example:8443/v1",
                                      tracing={"enabled": True, "exporter": "memory", **overrides}), {})
    t = create_tracing(cfg, lambda: 100.0, env={})  # a frozen clock: span times are exact offsets from "now"
    assert t is not None
    return t


def test_off_by_default_and_env_switches() -> None:
    """No config: no tracer. OTEL_TRACES_EXPORTER turns it on; OTEL_SDK_DISABLED always wins."""
    cfg = parse_config(gateway_config("http://u/v1"), {})
    assert create_tracing(cfg, lambda: 0.0, env={}) is None
    assert tracing_enabled(cfg.tracing, {"OTEL_TRACES_EXPORTER": "console"})
    on = parse_config(gateway_config("http://u/v1", tracing={"enabled": True}), {})
    assert not tracing_enabled(on.tracing, {"OTEL_SDK_DISABLED": "true"})


def test_record_span_is_a_noop_without_tracing(make_exchange: Callable[..., Exchange]) -> None:
    """Other policies may call record_span unconditionally."""
    ex = make_exchange()
    record_span(ex, "cache.lookup", 1.0, 2.0, result="miss")
    assert SPAN_KEY not in ex.state and TRACER_KEY not in ex.state


def test_request_and_attempt_spans(make_exchange: Callable[..., Exchange]) -> None:
    """The request span continues the caller's trace; each attempt is a child whose id goes upstream."""
    t = tracing()
    headers = CIMultiDictProxy(CIMultiDict({"traceparent": PARENT}))
    ex = make_exchange({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 64,
                        "temperature": 0.2}, headers=headers, received_at=99.0, route_name="main")
    span = t.start_request(ex)
    attempt_span = t.start_attempt(ex)
    traceparent = ex.upstream_headers["traceparent"]
    ctx = attempt_span.get_span_context()
    assert traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
    attempt = Attempt(upstream="mock", model="gpt-4o", started=100.0, ended=100.8, outcome="ok", status=200)
    ex.record.attempts.append(attempt)
    ex.state[ATTEMPTS_KEY] = [(attempt_span, attempt)]
    ex.record.status, ex.record.ended_at, ex.record.first_token_at = 200, 101.0, 100.5
    ex.record.usage = Usage(prompt=11, completion=7)
    ex.record.finish_reasons, ex.record.response_model = ["stop"], "gpt-4o-2024"
    t.finish(ex)
    spans = {s.kind.name: s for s in t.exporter.get_finished_spans()}  # type: ignore[attr-defined]
    server, client = spans["SERVER"], spans["CLIENT"]
    assert server.name == "chat gpt-4o" and server.context.trace_id == 0x0af7651916cd43dd8448eb211c80319c
    assert server.parent is not None and server.parent.span_id == 0xb7ad6b7169203331
    assert client.parent is not None and client.parent.span_id == span.get_span_context().span_id
    a = server.attributes
    assert a is not None
    assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"], a["gen_ai.request.model"]) == \
        ("chat", "openai", "gpt-4o")
    assert (a["gen_ai.request.max_tokens"], a["gen_ai.request.temperature"], a["server.address"]) == \
        (64, 0.2, "upstream.example")
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"], a["gen_ai.response.model"]) == \
        (11, 7, "gpt-4o-2024")
    assert tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)  # type: ignore[arg-type]
    assert "gen_ai.input.messages" not in a
    assert [e.name for e in server.events] == ["gen_ai.first_token"]
    assert server.end_time is not None and server.start_time is not None
    assert abs((server.end_time - server.start_time) / 1e9 - 2.0) < 0.05  # ended_at - received_at
    assert abs((client.end_time - client.start_time) / 1e9 - 0.8) < 0.05  # type: ignore[operator]


def test_content_only_when_asked(make_exchange: Callable[..., Exchange]) -> None:
    """capture_content: true records the prompt on the span."""
    t = tracing(capture_content=True)
    ex = make_exchange({"model": "gpt-4o", "messages": [{"role": "user", "content": "find me"}]})
    t.start_request(ex)
    ex.record.status, ex.record.ended_at = 200, 1.0
    t.finish(ex)
    (span,) = t.exporter.get_finished_spans()  # type: ignore[attr-defined]
    assert "find me" in span.attributes["gen_ai.input.messages"]  # type: ignore[index]


def test_child_spans_and_errors(make_exchange: Callable[..., Exchange]) -> None:
    """record_span adds children; a 5xx marks the request span as an error with error.type."""
    t = tracing()
    ex = make_exchange()
    t.start_request(ex)
    record_span(ex, "cache.lookup", 0.0, 0.001, result="miss")
    ex.record.status, ex.record.error_kind, ex.record.ended_at = 502, "connect_error", 1.0
    t.finish(ex)
    spans = {s.name: s for s in t.exporter.get_finished_spans()}  # type: ignore[attr-defined]
    assert spans["cache.lookup"].attributes == {"result": "miss"}
    assert spans["chat gpt-4o"].status.status_code.name == "ERROR"
    assert spans["chat gpt-4o"].attributes["error.type"] == "connect_error"  # type: ignore[index]
