"""The circuit-breaker layer: what counts as a failure, fast rejection, shadow mode, pending tickets."""
from __future__ import annotations

import time

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.body import OneChunk
from gateway.config import parse_config
from gateway.errors import LocalReply, UpstreamFailure
from gateway.exchange import Exchange, UpstreamResponse
from gateway.telemetry.metrics import Metrics
from policies.resilience.breaker import CircuitOpen
from policies.resilience.breaker_layer import (
    PENDING_TICKET,
    CircuitBreakerPolicy,
    settle_leftover,
    take_ticket,
)
from policies.resilience.metrics import ResilienceMetrics
from policies.resilience.registry import Resilience
from tests.support.exchange import build_exchange


def setup(**breaker: object) -> tuple[CircuitBreakerPolicy, Resilience, Metrics]:
    cfg = parse_config({"upstreams": {"a": {"base_url": "http://127.0.0.1:9/v1", "circuit_breaker": {
        "consecutive_failures": 2, "min_calls": 1000, **breaker}}}, "routes": [{"upstream": "a"}]}, {})
    metrics = Metrics()
    res = Resilience(ResilienceMetrics(metrics), lambda: 100.0, rand=lambda: 0.0)
    res.sync(cfg)
    return CircuitBreakerPolicy(res), res, metrics


def exchange() -> Exchange:
    return build_exchange(request_id="r", method="POST", path="/v1/chat/completions", operation="chat",
                    headers=CIMultiDictProxy(CIMultiDict()), raw_body=b"{}", body={}, received_at=0.0,
                    deadline=600.0, upstream="a")


def answering(status: int):  # type: ignore[no-untyped-def]
    async def next(ex: Exchange) -> UpstreamResponse:
        return UpstreamResponse(status, {}, OneChunk(b"{}"))
    return next


def raising(exc: BaseException):  # type: ignore[no-untyped-def]
    async def next(ex: Exchange) -> UpstreamResponse:
        raise exc
    return next


async def test_failures_open_and_open_rejects_fast() -> None:
    """5xx and upstream failures count; once open, the layer answers 503 without calling next, in < 5 ms."""
    policy, res, _ = setup()
    await policy(exchange(), answering(503))
    with pytest.raises(UpstreamFailure):
        await policy(exchange(), raising(UpstreamFailure("connect_error", "x")))
    assert res.breakers["a"].state == "open"
    called = []

    async def next(ex: Exchange) -> UpstreamResponse:
        called.append(ex)
        return UpstreamResponse(200, {}, OneChunk(b""))

    durations = []
    for _ in range(21):
        started = time.perf_counter()
        with pytest.raises(CircuitOpen) as exc:
            await policy(exchange(), next)
        durations.append(time.perf_counter() - started)
    assert sorted(durations)[10] < 0.005  # the median: one slow sample on a busy machine proves nothing
    assert called == [] and exc.value.status == 503 and int(exc.value.headers["retry-after"]) >= 1


@pytest.mark.parametrize("status", [400, 404, 408, 429])
async def test_client_errors_and_429_are_not_failures(status: int) -> None:
    """4xx (the upstream answered) and 429 (the rate limiter's business) never open the breaker."""
    policy, res, _ = setup()
    for _ in range(5):
        await policy(exchange(), answering(status))
    assert res.breakers["a"].state == "closed" and res.breakers["a"].consecutive == 0


async def test_own_rejections_and_cancellation_are_neutral() -> None:
    """A LocalReply from an inner layer (our own rejection) is not the upstream's failure."""
    policy, res, _ = setup()
    for _ in range(3):
        with pytest.raises(LocalReply):
            await policy(exchange(), raising(LocalReply(429, "queue full")))
    assert res.breakers["a"].consecutive == 0


async def test_success_ticket_waits_for_commit_point() -> None:
    """A 2xx leaves its ticket on the exchange; the commit point (or the sink) settles it."""
    policy, res, _ = setup()
    await policy(exchange(), answering(503))
    ex = exchange()
    await policy(ex, answering(200))
    assert res.breakers["a"].consecutive == 1  # not yet settled
    ticket = take_ticket(ex)
    assert ticket is not None and PENDING_TICKET not in ex.state
    ticket.settle("success")
    assert res.breakers["a"].consecutive == 0


@pytest.mark.parametrize(("status", "consecutive"), [(200, 0), (502, 2), (499, 1)])
async def test_leftover_ticket_settled_by_final_status(status: int, consecutive: int) -> None:
    """Without a retry policy, the sink judges a pending ticket by the request's final status."""
    policy, res, _ = setup(consecutive_failures=10)
    await policy(exchange(), answering(503))
    ex = exchange()
    await policy(ex, answering(200))
    ex.record.status = status
    settle_leftover(ex)
    assert res.breakers["a"].consecutive == consecutive and PENDING_TICKET not in ex.state


async def test_shadow_mode_counts_but_passes() -> None:
    """enforce: false lets every call through while the breaker is open, counted as shadow_reject."""
    policy, res, metrics = setup(enforce=False)
    for _ in range(2):
        await policy(exchange(), answering(500))
    assert res.breakers["a"].state == "open"
    resp = await policy(exchange(), answering(200))
    assert resp.status == 200
    assert metrics.registry.get_sample_value("gateway_policy_decisions_total",
                                             {"policy": "circuit_breaker", "decision": "shadow_reject"}) == 1


async def test_tool_prefix_selects_tool_breaker() -> None:
    """The tool routes' layer keys breakers as tool:<name>."""
    _, res, _ = setup()
    policy = CircuitBreakerPolicy(res, key_prefix="tool:")
    ex = exchange()
    ex.target.upstream = "quotes"
    await policy(ex, answering(500))
    assert res.breakers["tool:quotes"].consecutive == 1 and res.breakers["a"].consecutive == 0
