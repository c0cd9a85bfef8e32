"""OpenTelemetry traces: one span per request, one child per upstream attempt.

Off by default, and then nothing here runs: no policy is built, no sink is
registered, ``state.tracer`` stays None and ``record_span`` is one dict lookup.

When on, the ``tracing`` policy (just inside the usage policy) starts the
request span, ``{operation} {model}`` of kind SERVER, continuing an incoming
W3C ``traceparent``; the ``tracing_upstream`` policy (innermost, so it sees
every retry and fallback) starts a CLIENT span per attempt and sends its
context upstream in ``traceparent`` (via ``ex.upstream_headers``).
The request sink ends them at request end with the times the exchange
recorded (loop clock, converted to epoch ns), adds the GenAI semantic
convention attributes known only then (response model, usage, finish
reasons) and an event at the first token. Prompt and completion text are
recorded only with ``tracing.capture_content: true``; keys and headers never.

Other policies add their own child spans (cache lookup, rate-limit wait) from
timestamps with ``record_span(ex, name, start, end, **attributes)``.

Export: OTLP/HTTP to ``tracing.endpoint``, else to what the standard
``OTEL_EXPORTER_OTLP_*`` variables say (the SDK reads them); ``OTEL_TRACES_EXPORTER=
otlp|console`` turns tracing on without config, ``OTEL_SDK_DISABLED=true`` off.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config_model import Config
from gateway.exchange import Attempt, Exchange, StateKey
from gateway.produced import CAPTURE_KEY, produced_texts
from gateway.telemetry.metrics_sink import attempt_ends
from policies.tracing.config import tracing_enabled
from policies.tracing.keys import ATTEMPTS_KEY

SPAN_KEY: StateKey[Span] = StateKey("tracing.span")  # the request's SERVER span
GENAI_OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings",
                    "responses": "chat"}
MAX_CONTENT = 32 * 1024
_MAX_NAME = 128


@dataclass(slots=True)
class Tracing:
    provider: TracerProvider
    tracer: Tracer
    exporter: SpanExporter
    capture_content: bool
    servers: dict[str, tuple[str, int | None, str]]  # upstream -> (host, port, provider name)
    clock: Callable[[], float]  # the exchange's clock (loop time)
    propagator: TraceContextTextMapPropagator = field(default_factory=TraceContextTextMapPropagator)

    def ns(self, clock_time: float) -> int:
        """Epoch nanoseconds of a clock time: spans need wall time, the exchange keeps loop time."""
        return time.time_ns() - int((self.clock() - clock_time) * 1e9)

    def start_request(self, ex: Exchange) -> Span:
        parent = self.propagator.extract(ex.request.headers)
        op = GENAI_OPERATIONS.get(ex.request.operation, ex.request.operation)
        span = self.tracer.start_span(f"{op} {ex.request.model[:_MAX_NAME]}".strip(), context=parent,
                                      kind=SpanKind.SERVER, start_time=self.ns(ex.request.received_at),
                                      attributes=self._request_attrs(ex, op))
        ex.state.set(SPAN_KEY, span)
        ex.state.set(TRACER_KEY, self)
        return span

    def _request_attrs(self, ex: Exchange, op: str) -> dict[str, Any]:
        host, port, provider = self.servers.get(ex.target.upstream, ("", None, ""))
        attrs: dict[str, Any] = {"gen_ai.operation.name": op,
                                 "gen_ai.request.model": ex.request.model[:_MAX_NAME],
                                 "gen_ai.provider.name": provider, "server.address": host,
                                 "gateway.route": ex.request.route_name, "gateway.tenant": ex.request.tenant,
                                 "gateway.request_id": ex.request.request_id,
                                 "gateway.stream": ex.request.stream}
        if port:
            attrs["server.port"] = port
        body = ex.body or {}
        max_tokens = (
            body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
        )
        if type(max_tokens) is int:
            attrs["gen_ai.request.max_tokens"] = max_tokens
        temperature = body.get("temperature")
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
            attrs["gen_ai.request.temperature"] = float(temperature)
        if self.capture_content:
            attrs["gen_ai.input.messages"] = _content(body)
        return attrs

    def start_attempt(self, ex: Exchange) -> Span:
        parent = ex.state.get(SPAN_KEY)
        op = GENAI_OPERATIONS.get(ex.request.operation, ex.request.operation)
        host, port, provider = self.servers.get(ex.target.upstream, ("", None, ""))
        attrs: dict[str, Any] = {"gen_ai.operation.name": op,
                                 "gen_ai.request.model": ex.target.model[:_MAX_NAME],
                                 "gen_ai.provider.name": provider, "server.address": host, "gateway.upstream":
                                 ex.target.upstream}
        if port:
            attrs["server.port"] = port
        span = self.tracer.start_span(f"{op} {ex.target.model[:_MAX_NAME]}".strip(), kind=SpanKind.CLIENT,
                                      context=set_span_in_context(parent) if parent is not None else None,
                                      attributes=attrs)
        headers: dict[str, str] = {}
        self.propagator.inject(headers, context=set_span_in_context(span))
        ex.upstream_headers.update(headers)
        return span

    def child(self, ex: Exchange, name: str, start: float, end: float, attrs: Mapping[str, Any]) -> None:
        parent = ex.state.get(SPAN_KEY)
        if parent is None:
            return
        span = self.tracer.start_span(name, context=set_span_in_context(parent), start_time=self.ns(start),
                                      attributes=dict(attrs))
        span.end(end_time=self.ns(end))

    def finish(self, ex: Exchange) -> None:
        """The request sink: close attempt spans, then the request span, with what the exchange recorded."""
        span = ex.state.get(SPAN_KEY)
        if span is None:
            span = self.start_request(ex)  # passthrough: no policy ran, the span is still wanted
        ends = {id(a): end for a, end in attempt_ends(ex)}
        for attempt_span, attempt in ex.state.get(ATTEMPTS_KEY) or ():
            self._end_attempt(attempt_span, attempt, ends.get(id(attempt), ex.record.ended_at))
        if span.is_recording():
            span.set_attributes(self._result_attrs(ex))
            if ex.record.first_token_at:
                span.add_event("gen_ai.first_token", timestamp=self.ns(ex.record.first_token_at))
            if ex.record.status >= 500 or ex.record.status == 0 or \
                    ex.record.stream_outcome in ("error_event", "cut"):
                span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=self.ns(ex.record.ended_at) if ex.record.ended_at else None)

    def _result_attrs(self, ex: Exchange) -> dict[str, Any]:
        attrs: dict[str, Any] = {"http.response.status_code": ex.record.status,
                                 "gateway.cache_result": ex.record.cache_result,
                                 "gateway.source": ex.record.source,
                                 "gateway.attempts": len(ex.record.attempts)}
        if ex.record.response_model:
            attrs["gen_ai.response.model"] = ex.record.response_model[:_MAX_NAME]
        if ex.record.finish_reasons:
            attrs["gen_ai.response.finish_reasons"] = tuple(ex.record.finish_reasons[:16])
        if ex.record.usage is not None:
            attrs["gen_ai.usage.input_tokens"] = ex.record.usage.prompt
            attrs["gen_ai.usage.output_tokens"] = ex.record.usage.completion
            attrs["gateway.usage.estimated"] = ex.record.usage.estimated
            if ex.record.usage.cached_prompt:
                attrs["gen_ai.usage.cache_read.input_tokens"] = ex.record.usage.cached_prompt
        if ex.record.error_kind or (ex.record.status >= 400):
            attrs["error.type"] = ex.record.error_kind or str(ex.record.status)
        if ex.record.stream_outcome:
            attrs["gateway.stream_outcome"] = ex.record.stream_outcome
        if self.capture_content:
            capture = ex.state.get(CAPTURE_KEY)
            if capture is not None:
                texts, _ = produced_texts(ex.request.operation, capture)
                attrs["gen_ai.output.messages"] = "".join(texts)[:MAX_CONTENT]
        return attrs

    def _end_attempt(self, span: Span, attempt: Attempt | None, end: float) -> None:
        if span.is_recording():
            outcome = attempt.outcome if attempt is not None else "not_sent"
            if outcome == "pending" and attempt is not None and attempt.status:
                outcome = f"http_{attempt.status}"  # an error answer dropped unread (retried)
            span.set_attribute("gateway.attempt.outcome", outcome)
            if attempt is not None and attempt.status:
                span.set_attribute("http.response.status_code", attempt.status)
            if outcome != "ok":  # redirect, http_<status>, a failure kind, cancelled, not_sent
                span.set_attribute("error.type", outcome)
                span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=self.ns(end) if end else None)

    async def close(self) -> None:
        await asyncio.to_thread(self.provider.shutdown)  # flushes the batch processor over the network


TRACER_KEY: StateKey[Tracing] = StateKey("tracing.tracer")  # set with the request span (record_span)


def _content(body: Mapping[str, Any]) -> str:
    for key in ("messages", "input", "prompt"):
        if key in body:
            return orjson.dumps(body[key]).decode()[:MAX_CONTENT]
    return ""


def record_span(ex: Exchange, name: str, start: float, end: float, **attributes: Any) -> None:
    """Add a finished child span (e.g. ``cache.lookup``, ``rate_limit.wait``) from ``state.clock`` times.

    A no-op costing one lookup when tracing is off or the request has no span.
    """
    tracing = ex.state.get(TRACER_KEY)
    if tracing is not None:
        tracing.child(ex, name, start, end, attributes)


def create_tracing(config: Config, clock: Callable[[], float],
                   env: Mapping[str, str] | None = None) -> Tracing | None:
    """The app's tracer provider (never the global one), or None when tracing is off."""
    env = os.environ if env is None else env
    cfg = config.tracing
    if not tracing_enabled(cfg, env):
        return None
    exporter_name = cfg.exporter if cfg.enabled else env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": cfg.service_name}
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
                              resource=Resource.create(attributes), shutdown_on_exit=False)
    exporter: SpanExporter
    if exporter_name == "memory":
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif exporter_name == "console":
        exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=cfg.endpoint or None, headers=dict(cfg.headers) or None)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    servers = {name: _server(up.base_url, up.provider) for name, up in config.upstreams.items()}
    return Tracing(provider=provider, tracer=provider.get_tracer("gateway"), exporter=exporter,
                   capture_content=cfg.capture_content, servers=servers, clock=clock)


def _server(base_url: str, provider: str) -> tuple[str, int | None, str]:
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port, provider
