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

from dataclasses import dataclass, field
from typing import Any

from gateway.appstate import AppState
from gateway.exchange import Attempt, Exchange, Usage
from gateway.telemetry.metrics import (
    OTHER,
    RequestMetrics,
    observe_many,
    status_class,
)

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


class _Series:
    """The fast slots (``Children.slot``) one key of bounded labels reaches: what every
    request touches is made with the key; the TTFT child and each token kind's at their first use (a child
    made is a series shown)."""

    __slots__ = ("duration", "overhead", "requests", "tokens", "ttft")

    def __init__(self, requests: Any, duration: Any, overhead: Any) -> None:
        self.requests, self.duration, self.overhead = requests, duration, overhead
        self.ttft: Any = None
        self.tokens: list[Any] = [None] * len(TOKEN_KINDS)  # ``gateway_tokens_total``'s, by TOKEN_KINDS


# route, model, upstream, status class, cache result, TTFT source, tenant
SeriesKey = tuple[str, str, str, str, str, str, str]


@dataclass(slots=True)
class MetricsSink:
    """The request families' updates, each label tuple's children looked up once per process: one dict
    lookup per request for the request families and the tokens, one per attempt."""

    state: AppState
    m: RequestMetrics
    _series: dict[SeriesKey, _Series] = field(default_factory=dict, init=False)
    # ``gateway_upstream_duration_seconds``' slots by (upstream, outcome)
    _attempt_slots: dict[tuple[str, str], Any] = field(default_factory=dict, init=False)

    def __call__(self, ex: Exchange) -> None:
        request, record = ex.request, ex.record
        upstream = ex.target.upstream or OTHER
        model = self.state.metrics.bounded_model(ex.target.model or request.model)
        source = record.source
        key = (request.route_name or OTHER, model, upstream, status_class(record.status),
               record.cache_result if record.cache_result in CACHE_RESULTS else OTHER,
               source if source in TTFT_SOURCES else "", request.identity.tenant)
        series = self._series.get(key) or self._new_series(key)
        series.requests.inc(1)
        duration = max(0.0, record.ended_at - request.received_at)
        series.duration.observe(duration)
        series.overhead.observe(max(0.0, duration - record.upstream_s - record.waited_s))
        if record.first_token_at and key[5]:
            ttft = series.ttft
            if ttft is None:
                ttft = series.ttft = self.m.ttft.slot(model, upstream, source)
            ttft.observe(max(0.0, record.first_token_at - request.received_at))
        inspector = ex.view
        if inspector is not None and inspector.gaps:
            observe_many(self.m.inter_token(model, upstream), inspector.gaps)
        if record.attempts:
            self._attempts(record.attempts, record.ended_at)
        if record.usage is not None and source == "upstream":
            self._tokens(series, record.usage, record.cost_usd, key)

    def _new_series(self, key: SeriesKey) -> _Series:
        route, model, upstream, status, cache, _source, _tenant = key
        m = self.m
        series = self._series[key] = _Series(m.requests.slot(route, model, upstream, status, cache),
                                             m.duration.slot(route, model, upstream), m.overhead.slot(route))
        return series

    def _attempts(self, attempts: list[Attempt], end: float) -> None:
        """Each attempt's duration; one dropped unread has no end, so it ends when the next one starts."""
        slots, last = self._attempt_slots, len(attempts) - 1
        for i, attempt in enumerate(attempts):
            ended = attempt.ended or (attempts[i + 1].started if i < last else end)
            outcome = attempt.outcome
            if outcome != "ok":  # the usual outcome is its own label
                outcome = attempt_outcome(outcome, attempt.status)
            labels = (attempt.upstream, outcome)
            slot = slots.get(labels)
            if slot is None:
                slot = slots[labels] = self.m.upstream.slot(*labels)
            slot.observe(max(0.0, ended - attempt.started))

    def _tokens(self, series: _Series, usage: Usage, cost: float | None, key: SeriesKey) -> None:
        _route, model, upstream, _status, _cache, _source, tenant = key
        slots = series.tokens
        for i, count in enumerate((usage.prompt, usage.completion, usage.cached_prompt, usage.reasoning)):
            if count > 0:  # a provider's negative figure is skipped (Counter.inc raised for it)
                slot = slots[i]
                if slot is None:
                    slot = slots[i] = self.m.tokens.slot(model, upstream, tenant, TOKEN_KINDS[i])
                slot.inc(count)
                if usage.estimated:
                    self.m.tokens_estimated.slot(model, upstream, tenant, TOKEN_KINDS[i]).inc(count)
        if cost is not None and cost > 0.0:
            self.m.cost.slot(model, tenant).inc(cost)
