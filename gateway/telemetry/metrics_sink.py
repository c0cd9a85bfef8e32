"""The metrics sink: one finished Exchange in, the request families of the issue updated.

Called by the handler after every proxied request (and by nothing else), after
``finalize_usage`` has settled usage and cost. It reads only the record fields
of the exchange and maps every label through a bounded set: routes, upstreams
and tenants from config, models through ``bounded_model``, status classes,
attempt outcomes and cache results from fixed vocabularies. Nothing a client
sends can add a series.

Timing model (loop clock): ``received_at`` .. ``ended_at`` is the request as the
client saw it; ``first_token_at`` the first content or tool-call delta written
to the client; ``upstream_s`` the time spent waiting on upstreams (headers and
each body read); ``waited_s`` deliberate waits (rate-limit queue, retry
backoff). Gateway overhead is what remains of the duration after both. It
also contains time blocked writing to a slow client, which is not the
gateway's work but cannot be told apart without instrumenting every write.
"""
from __future__ import annotations

from dataclasses import dataclass

from gateway.appstate import AppState
from gateway.exchange import Attempt, Exchange
from gateway.telemetry.metrics import OTHER, RequestMetrics, bounded, observe_many, status_class

CACHE_RESULTS = frozenset({"none", "hit", "semantic-hit", "miss", "bypass", "coalesced"})
ATTEMPT_OUTCOMES = frozenset({
    "ok", "pending", "cancelled", "redirect", "http_429", "connect_error", "connect_timeout",
    "reset_before_response", "timeout_before_first_byte", "idle_timeout", "reset_mid_stream", "total_timeout",
})
TTFT_SOURCES = frozenset({"upstream", "cache"})
TOKEN_KINDS = ("prompt", "completion", "cached_prompt", "reasoning")
INFLIGHT_KEY = "inflight"


def attempt_outcome(outcome: str, status: int = 0) -> str:
    """Bounded outcome label: ``http_429`` kept apart, other statuses folded to ``http_4xx``/``http_5xx``.

    An error answer dropped unread (a retried 503) keeps outcome ``pending``; its status tells what it was.
    """
    if outcome == "pending" and status >= 400:
        outcome = f"http_{status}"
    if outcome in ATTEMPT_OUTCOMES:
        return outcome
    if outcome.startswith("http_") and len(outcome) == 8 and outcome[5] in "45":
        return f"http_{outcome[5]}xx"
    return OTHER


def attempt_ends(ex: Exchange) -> list[tuple[Attempt, float]]:
    """Each attempt with its end; one dropped unread has none, so it ends when the next one starts."""
    attempts = ex.record.attempts
    return [(a, a.ended or (attempts[i + 1].started if i + 1 < len(attempts) else ex.record.ended_at))
            for i, a in enumerate(attempts)]


@dataclass(slots=True)
class MetricsSink:
    state: AppState
    m: RequestMetrics

    def __call__(self, ex: Exchange) -> None:
        m = self.m
        route = ex.request.route_name or OTHER
        upstream = ex.target.upstream or OTHER
        model = self.state.metrics.bounded_model(ex.target.model or ex.request.model)
        duration = max(0.0, ex.record.ended_at - ex.request.received_at)
        m.requests(route, model, upstream, status_class(ex.record.status),
                   bounded(ex.record.cache_result, CACHE_RESULTS)).inc()
        m.duration(route, model, upstream).observe(duration)
        m.overhead(route).observe(max(0.0, duration - ex.record.upstream_s - ex.record.waited_s))
        if ex.record.first_token_at and ex.record.source in TTFT_SOURCES:
            m.ttft(model, upstream,
                   ex.record.source).observe(max(0.0, ex.record.first_token_at - ex.request.received_at))
        inspector = ex.view
        if inspector is not None and inspector.gaps:
            observe_many(m.inter_token(model, upstream), inspector.gaps)
        for attempt, ended in attempt_ends(ex):
            m.upstream(attempt.upstream, attempt_outcome(attempt.outcome, attempt.status)).observe(
                max(0.0, ended - attempt.started))
        if ex.record.usage is not None and ex.record.source == "upstream":
            self._tokens(ex, model, upstream)

    def _tokens(self, ex: Exchange, model: str, upstream: str) -> None:
        usage = ex.record.usage
        assert usage is not None
        tenant = ex.request.tenant
        counts = (usage.prompt, usage.completion, usage.cached_prompt, usage.reasoning)
        family = self.m.tokens_estimated if usage.estimated else None
        for kind, count in zip(TOKEN_KINDS, counts):
            if count:
                self.m.tokens(model, upstream, tenant, kind).inc(count)
                if family is not None:
                    family(model, upstream, tenant, kind).inc(count)
        cost = ex.record.cost_usd
        if cost:
            self.m.cost(model, tenant).inc(cost)
