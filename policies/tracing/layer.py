"""Tracing policies: the request span (outer) and one span per upstream attempt (innermost).

Both factories return None when tracing is off (``state.tracer`` is None), so
a gateway without tracing runs no tracing code per request. The spans are
ended by the tracing sink (``Tracing.finish``) at request end, when the
outcome, usage and timings are known; see ``policies.tracing.tracer``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.appstate import AppState
from gateway.chain import Next
from gateway.config_model import Config
from gateway.exchange import Exchange, UpstreamResponse
from policies.tracing.keys import ATTEMPTS_KEY

if TYPE_CHECKING:
    from policies.tracing.tracer import Tracing


class RequestSpanPolicy:
    """Start the request span as early as the onion allows (its start time is the arrival anyway)."""

    name = "tracing"

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        self.tracing.start_request(ex)
        return await next(ex)


class AttemptSpanPolicy:
    """Wrap each call to an upstream: a CLIENT span whose context travels upstream in ``traceparent``."""

    name = "tracing_upstream"

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        span = self.tracing.start_attempt(ex)
        before = len(ex.record.attempts)
        try:
            return await next(ex)
        finally:
            # The terminal appends the Attempt (with its times and outcome) as it sends; none: never sent.
            attempt = ex.record.attempts[before] if len(ex.record.attempts) > before else None
            spans = ex.state.get(ATTEMPTS_KEY)
            if spans is None:
                spans = []
                ex.state.set(ATTEMPTS_KEY, spans)
            spans.append((span, attempt))


async def request_span_factory(state: AppState, config: Config) -> RequestSpanPolicy | None:
    return RequestSpanPolicy(state.tracer) if state.tracer is not None else None


async def attempt_span_factory(state: AppState, config: Config) -> AttemptSpanPolicy | None:
    return AttemptSpanPolicy(state.tracer) if state.tracer is not None else None
