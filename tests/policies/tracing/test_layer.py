"""Tracing policies: absent when tracing is off; one span per attempt, recorded with its Attempt."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.body import OneChunk
from gateway.config import parse_config
from gateway.errors import UpstreamFailure
from gateway.exchange import Attempt, Exchange, UpstreamResponse
from policies.tracing.keys import ATTEMPTS_KEY
from policies.tracing.layer import (
    AttemptSpanPolicy,
    RequestSpanPolicy,
    attempt_span_factory,
    request_span_factory,
)
from policies.tracing.tracer import SPAN_KEY, create_tracing
from tests.support.exchange import build_exchange
from tests.support.servers import gateway_config


def exchange() -> Exchange:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": []}
    return build_exchange(request_id="r", method="POST", path="/v1/chat/completions", operation="chat",
                    headers=CIMultiDictProxy(CIMultiDict()), raw_body=b"{}", body=body, received_at=0.0,
                    deadline=60.0, model="gpt-4o", upstream="mock", upstream_model="gpt-4o")


@pytest.fixture
def tracing() -> Any:
    cfg = parse_config(gateway_config("http://u/v1", tracing={"enabled": True, "exporter": "memory"}), {})
    return create_tracing(cfg, lambda: 0.0, env={})


async def test_factories_build_nothing_when_tracing_is_off() -> None:
    """No tracer on the state: neither policy is in the chain."""
    st, cfg = SimpleNamespace(tracer=None), parse_config(gateway_config("http://u/v1"), {})
    assert await request_span_factory(st, cfg) is None  # type: ignore[arg-type]
    assert await attempt_span_factory(st, cfg) is None  # type: ignore[arg-type]


async def test_each_attempt_gets_a_span_and_its_attempt(tracing: Any) -> None:
    """Two calls through the attempt policy (a retry) give two spans, each paired with the Attempt it sent."""
    ex = exchange()
    await RequestSpanPolicy(tracing)(ex, _ok)
    policy = AttemptSpanPolicy(tracing)
    with pytest.raises(UpstreamFailure):
        await policy(ex, _fails)
    await policy(ex, _ok)
    pairs = ex.state[ATTEMPTS_KEY]
    assert [a.outcome for _, a in pairs] == ["connect_error", "ok"]
    assert pairs[0][0] is not pairs[1][0] and SPAN_KEY in ex.state
    assert ex.upstream_headers["traceparent"].split("-")[2] == \
        f"{pairs[1][0].get_span_context().span_id:016x}"


async def test_an_attempt_that_never_left_has_no_attempt(tracing: Any) -> None:
    """A call refused before the terminal (e.g. an open breaker) is recorded with no Attempt."""
    ex = exchange()

    async def refused(ex: Exchange) -> UpstreamResponse:
        raise UpstreamFailure("connect_error", "refused before sending")

    with pytest.raises(UpstreamFailure):
        await AttemptSpanPolicy(tracing)(ex, refused)
    assert ex.state[ATTEMPTS_KEY][0][1] is None


async def _ok(ex: Exchange) -> UpstreamResponse:
    ex.record.attempts.append(Attempt(upstream="mock", model="gpt-4o", started=0.0, ended=0.1, outcome="ok",
                                      status=200))
    return UpstreamResponse(status=200, headers={}, body=OneChunk(b"{}"))


async def _fails(ex: Exchange) -> UpstreamResponse:
    ex.record.attempts.append(Attempt(upstream="mock", model="gpt-4o", started=0.0, ended=0.1,
                                      outcome="connect_error"))
    raise UpstreamFailure("connect_error", "down", upstream="mock")
