"""The retry policy on an injected clock and sleep: retries, Retry-After, budget, commit point, fallbacks."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.chain import build_chain
from gateway.config import parse_config
from gateway.errors import LocalReply, UpstreamFailure
from gateway.exchange import Exchange, UpstreamResponse
from gateway.telemetry.metrics import Metrics
from policies.resilience.breaker import CircuitOpen
from policies.resilience.breaker_layer import PENDING_TICKET, CircuitBreakerPolicy
from policies.resilience.metrics import ResilienceMetrics
from policies.resilience.registry import Resilience
from policies.resilience.retry_layer import RetryPolicy
from policies.resilience.targets import RoutePlanner
from tests.support.exchange import build_exchange, replace_route
from tests.support.until import until

ROLE = b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
TEXT = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
DONE = b"data: [DONE]\n\n"
ERROR = b'data: {"error":{"message":"overloaded"}}\n\n'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Body:
    """An upstream body that records whether it was closed; ``stall`` blocks after the chunks."""

    def __init__(self, *chunks: bytes, fail: BaseException | None = None, stall: bool = False) -> None:
        self.chunks = list(chunks)
        self.fail = fail
        self.stall = stall
        self.closed = False

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        if self.stall:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


def answer(status: int = 200, *chunks: bytes, sse: bool = False, headers: dict[str, str] | None = None,
           **body: Any) -> UpstreamResponse:
    ctype = "text/event-stream" if sse else "application/json"
    return UpstreamResponse(status, {"content-type": ctype, **(headers or {})},
                            Body(*(chunks or (b'{"ok":true}',)), **body), upstream="")


Script = list[UpstreamResponse | BaseException]


class Harness:
    """retry -> circuit breaker -> a scripted terminal, on the configured upstreams a, b, c."""

    def __init__(self, *, retry: dict[str, Any] | None = None, breaker: dict[str, Any] | None = None,
                 fallbacks: list[dict[str, Any]] | None = None,
                 timeouts: dict[str, Any] | None = None,
                 context_fallbacks: list[dict[str, Any]] | None = None,
                 hedge: dict[str, Any] | None = None, fake_hedge_timer: bool = False,
                 targets: list[dict[str, Any]] | None = None) -> None:
        retry = {"base_delay_s": 0.1, "max_delay_s": 1.0, "budget_floor": 100, **(retry or {})}
        breaker = {"consecutive_failures": 100, "min_calls": 1000, **(breaker or {})}
        ups = {name: {"base_url": "http://127.0.0.1:9/v1", "retry": retry, "circuit_breaker": breaker,
                      "timeouts": timeouts or {}} for name in "abc"}
        self.config = parse_config({"upstreams": ups, "routes": [
            {"match": {"model": "*"}, "upstream": "a", "fallbacks": fallbacks or [],
             "context_fallbacks": context_fallbacks or [], **({"hedge": hedge} if hedge else {}),
             **({"targets": targets} if targets else {})}]}, {})
        self.clock = Clock()
        self.hedge_delays: list[float] = []  # with fake_hedge_timer: the hedge delays (each returns at once)
        self.metrics = Metrics()
        self.res = Resilience(ResilienceMetrics(self.metrics), self.clock, rand=lambda: 0.5)
        self.res.sync(self.config)
        planner = RoutePlanner(self.config, self.res, rand=lambda: 0.25)
        self.policy = RetryPolicy(res=self.res, planner=planner, clock=self.clock,
                                  sleep=self.clock.sleep, rand=lambda: 0.5,
                                  context_planner=planner.context_plan,
                                  hedge_sleep=self.hedge_timer if fake_hedge_timer else None)
        self.scripts: dict[str, Script] = {"a": [], "b": [], "c": []}
        self.calls: list[tuple[str, str, str]] = []
        self.chain = build_chain([self.policy, CircuitBreakerPolicy(self.res)], self.terminal)

    async def terminal(self, ex: Exchange) -> UpstreamResponse:
        body_model = ex.body.get("model") if ex.body else ""
        self.calls.append((ex.target.upstream, ex.target.model, body_model))
        ex.record.upstream_s += 0
        item = self.scripts[ex.target.upstream].pop(0)
        if isinstance(item, BaseException):
            raise item
        return UpstreamResponse(item.status, item.headers, item.body, item.source, ex.target.upstream)

    def exchange(self, stream: bool = False) -> Exchange:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        ex = build_exchange(request_id="r", method="POST", path="/v1/chat/completions", operation="chat",
                      headers=CIMultiDictProxy(CIMultiDict()), raw_body=orjson.dumps(body), body=body,
                      received_at=self.clock.now, deadline=self.clock.now + 600, route_name="gpt-4o",
                      model="gpt-4o", upstream="a", upstream_model="gpt-4o", stream=stream)
        ex = replace_route(ex, self.config.routes[0])
        return ex

    async def hedge_timer(self, seconds: float) -> None:
        self.hedge_delays.append(seconds)
        self.clock.now += seconds

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def read(resp: UpstreamResponse) -> bytes:
    return b"".join([chunk async for chunk in resp.body])


def failure(kind: str) -> UpstreamFailure:
    return UpstreamFailure(kind, kind, upstream="a")


async def test_503_then_200_is_retried_after_backoff() -> None:
    """A 503 is retried after a full-jitter backoff; the dropped answer's body is closed."""
    h = Harness()
    dropped = answer(503)
    h.scripts["a"] = [dropped, answer(200)]
    ex = h.exchange()
    resp = await h.chain(ex)
    assert resp.status == 200 and await read(resp) == b'{"ok":true}'
    assert dropped.body.closed and h.clock.sleeps == [0.05]  # rand 0.5 x base 0.1
    assert ex.response_headers == {"x-gateway-attempts": "2"} and ex.record.waited_s == 0.05
    assert h.sample("gateway_retries_total", upstream="a", reason="503") == 1


async def test_retries_spent_hand_back_last_answer_with_should_retry_false() -> None:
    """After max_attempts the last 5xx goes back as is, marked x-should-retry: false."""
    h = Harness()
    answers = [answer(503), answer(502), answer(500)]
    h.scripts["a"] = list(answers)
    ex = h.exchange()
    resp = await h.chain(ex)
    assert resp is not None and resp.status == 500 and not answers[2].body.closed
    assert answers[0].body.closed and answers[1].body.closed
    assert ex.response_headers == {"x-gateway-attempts": "3", "x-should-retry": "false"}
    assert h.clock.sleeps == [0.05, 0.1]


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
async def test_client_errors_never_retried(status: int) -> None:
    """4xx other than 408/429 pass through untouched (check-config refuses them in retry_on)."""
    h = Harness()
    h.scripts["a"] = [answer(status, b'{"error":{}}')]
    ex = h.exchange()
    resp = await h.chain(ex)
    assert resp.status == status and await read(resp) == b'{"error":{}}'
    assert len(h.calls) == 1 and "x-should-retry" not in ex.response_headers


async def test_retry_after_is_honoured_when_it_fits() -> None:
    """A 429 with Retry-After: 1 waits 1 s (not the shorter backoff), then succeeds."""
    h = Harness()
    h.scripts["a"] = [answer(429, headers={"retry-after": "1"}), answer(200)]
    resp = await h.chain(h.exchange())
    assert resp.status == 200 and h.clock.sleeps == [1.0]


@pytest.mark.parametrize(("headers", "deadline_left"), [
    ({"retry-after": "120"}, 600.0),  # more than max_retry_after_s (60)
    ({"retry-after-ms": "5000"}, 3.0),  # more than what is left of the deadline
])
async def test_too_long_retry_after_goes_back_at_once(headers: dict[str, str], deadline_left: float) -> None:
    """A wait beyond min(max_retry_after_s, deadline) is not waited: the 429 returns with its headers."""
    h = Harness()
    h.scripts["a"] = [answer(429, headers=headers)]
    ex = h.exchange()
    ex.request = ex.request._replace(deadline=h.clock.now + deadline_left)
    resp = await h.chain(ex)
    assert resp.status == 429 and resp.headers.items() >= headers.items()
    assert h.clock.sleeps == [] and len(h.calls) == 1


async def test_ratelimit_reset_header_used_on_429() -> None:
    """Without Retry-After, a 429's x-ratelimit-reset-requests sets the wait."""
    h = Harness()
    h.scripts["a"] = [answer(429, headers={"x-ratelimit-reset-requests": "2s",
                                           "x-ratelimit-remaining-requests": "0"}), answer(200)]
    await h.chain(h.exchange())
    assert h.clock.sleeps == [2.0]


async def test_connect_failures_raise_after_retries() -> None:
    """Connect errors are retried; when all fail the failure propagates with the retry headers."""
    h = Harness()
    h.scripts["a"] = [failure("connect_error"), failure("connect_timeout"), failure("reset_before_response")]
    ex = h.exchange()
    with pytest.raises(UpstreamFailure) as exc:
        await h.chain(ex)
    assert exc.value.kind == "reset_before_response" and len(h.calls) == 3
    assert ex.response_headers == {"x-gateway-attempts": "3", "x-should-retry": "false"}
    assert h.sample("gateway_timeouts_total", upstream="a", phase="connect") == 1


async def test_total_timeout_and_unlisted_reasons_are_not_retried() -> None:
    """A spent deadline is final; so is a reason missing from retry_on."""
    h = Harness(retry={"retry_on": ["503"]})
    h.scripts["a"] = [failure("total_timeout")]
    with pytest.raises(UpstreamFailure):
        await h.chain(h.exchange())
    h.scripts["a"] = [answer(502)]
    assert (await h.chain(h.exchange())).status == 502
    assert len(h.calls) == 2


async def test_backoff_past_deadline_stops() -> None:
    """No retry is started when its backoff would outlive the total deadline."""
    h = Harness(retry={"base_delay_s": 10, "max_delay_s": 10, "jitter": "none"})
    h.scripts["a"] = [answer(503)]
    ex = h.exchange()
    ex.request = ex.request._replace(deadline=h.clock.now + 5)
    assert (await h.chain(ex)).status == 503 and h.clock.sleeps == []


async def test_budget_caps_retries_in_a_storm() -> None:
    """With every answer a 503, total attempts stay within (1 + budget_ratio) x requests."""
    h = Harness(retry={"budget_ratio": 0.2, "budget_floor": 2})
    requests = 50
    h.scripts["a"] = [answer(503) for _ in range(requests * 3)]
    for _ in range(requests):
        await h.chain(h.exchange())
    assert len(h.calls) <= 1.2 * requests
    assert h.sample("gateway_retry_budget_exhausted_total", upstream="a") > 0


async def test_error_event_before_commit_fails_over_and_stream_replays() -> None:
    """A stream whose first event is an error fails over; the client gets the fallback's stream whole."""
    h = Harness(fallbacks=[{"upstream": "b", "model": "gpt-4o-mini"}])
    broken = answer(200, ROLE, ERROR, sse=True)
    h.scripts["a"] = [broken]
    h.scripts["b"] = [answer(200, ROLE, TEXT, DONE, sse=True)]
    ex = h.exchange(stream=True)
    resp = await h.chain(ex)
    assert await read(resp) == ROLE + TEXT + DONE and broken.body.closed
    assert h.calls == [("a", "gpt-4o", "gpt-4o"), ("b", "gpt-4o-mini", "gpt-4o-mini")]
    assert resp.upstream == "b" and ex.response_headers["x-gateway-attempts"] == "2"
    assert h.sample("gateway_fallbacks_total", route="gpt-4o", **{"from": "a", "to": "b"}) == 1
    assert h.res.breakers["a"].consecutive == 1 and h.res.breakers["b"].consecutive == 0


async def test_error_event_without_fallback_reaches_client() -> None:
    """With nowhere to fail over, the error event itself is the answer (never a clean end)."""
    h = Harness()
    h.scripts["a"] = [answer(200, ROLE, ERROR, sse=True)]
    resp = await h.chain(h.exchange(stream=True))
    assert await read(resp) == ROLE + ERROR and len(h.calls) == 1


async def test_error_event_retried_when_listed() -> None:
    """retry_on: [error_event] retries the same upstream before committing."""
    h = Harness(retry={"retry_on": ["error_event"]})
    h.scripts["a"] = [answer(200, ROLE, ERROR, sse=True), answer(200, ROLE, TEXT, DONE, sse=True)]
    resp = await h.chain(h.exchange(stream=True))
    assert await read(resp) == ROLE + TEXT + DONE and len(h.calls) == 2


async def test_stall_after_role_chunk_is_a_first_byte_timeout() -> None:
    """A stream that sends its role chunk and then nothing is cut at first_byte_s and retried."""
    h = Harness(timeouts={"first_byte_s": 0.05})
    stalled = answer(200, ROLE, sse=True, stall=True)
    h.scripts["a"] = [stalled, answer(200, ROLE, TEXT, DONE, sse=True)]
    ex = h.exchange(stream=True)
    resp = await h.chain(ex)
    assert await read(resp) == ROLE + TEXT + DONE and stalled.body.closed
    assert h.sample("gateway_timeouts_total", upstream="a", phase="first_byte") == 1
    assert h.sample("gateway_retries_total", upstream="a", reason="timeout_before_first_byte") == 1


async def test_first_byte_timeout_moves_on_to_the_fallback_at_once() -> None:
    """A silent primary is not waited for again: its first-byte timeout goes to the next target."""
    h = Harness(timeouts={"first_byte_s": 0.05}, fallbacks=[{"upstream": "b"}])
    stalled = answer(200, ROLE, sse=True, stall=True)
    h.scripts["a"] = [stalled]
    h.scripts["b"] = [answer(200, ROLE, TEXT, DONE, sse=True)]
    ex = h.exchange(stream=True)
    resp = await h.chain(ex)
    assert await read(resp) == ROLE + TEXT + DONE and stalled.body.closed
    assert [c[0] for c in h.calls] == ["a", "b"] and h.clock.sleeps == []
    assert ex.response_headers["x-gateway-attempts"] == "2"
    assert h.sample("gateway_policy_decisions_total", policy="retry", decision="move_on") == 1
    assert h.sample("gateway_retries_total", upstream="a", reason="timeout_before_first_byte") == 0


async def test_try_again_errors_still_retry_the_same_target_before_failing_over() -> None:
    """Positive control: a 503 or a reset is retried on the same target even with a fallback."""
    h = Harness(fallbacks=[{"upstream": "b"}])
    h.scripts["a"] = [answer(503), failure("reset_before_response"), answer(200)]
    ex = h.exchange()
    resp = await h.chain(ex)
    assert resp.status == 200 and [c[0] for c in h.calls] == ["a", "a", "a"]
    assert h.sample("gateway_policy_decisions_total", policy="retry", decision="move_on") == 0


async def test_reset_after_role_chunk_is_retried_as_before_response() -> None:
    """A reset before the first meaningful event counts as reset_before_response (retryable)."""
    h = Harness()
    h.scripts["a"] = [answer(200, ROLE, sse=True, fail=failure("reset_mid_stream")),
                      answer(200, ROLE, TEXT, DONE, sse=True)]
    resp = await h.chain(h.exchange(stream=True))
    assert await read(resp) == ROLE + TEXT + DONE
    assert h.sample("gateway_retries_total", upstream="a", reason="reset_before_response") == 1


async def test_stream_that_ends_without_events_is_retried() -> None:
    """A stream that ends after its role chunk, without [DONE], is a broken answer: retried."""
    h = Harness()
    h.scripts["a"] = [answer(200, ROLE, sse=True), answer(200, ROLE, TEXT, DONE, sse=True)]
    resp = await h.chain(h.exchange(stream=True))
    assert await read(resp) == ROLE + TEXT + DONE and len(h.calls) == 2


async def test_nothing_is_retried_after_commit() -> None:
    """Once the first token is out, a mid-stream failure propagates to the relay: one attempt."""
    h = Harness()
    h.scripts["a"] = [answer(200, ROLE, TEXT, sse=True, fail=UpstreamFailure("idle_timeout", "stall",
                                                                               committed=True))]
    resp = await h.chain(h.exchange(stream=True))
    got = []
    with pytest.raises(UpstreamFailure):
        async for chunk in resp.body:
            got.append(chunk)
    assert got == [ROLE + TEXT] and len(h.calls) == 1  # the peeked chunks, as one


async def test_fallback_chain_rewrites_model() -> None:
    """Each fallback gets its own model; without a model it keeps the one the primary was sent."""
    h = Harness(retry={"max_attempts": 1}, fallbacks=[{"upstream": "b", "model": "small"}, {"upstream": "c"}])
    h.scripts["a"] = [failure("connect_error")]
    h.scripts["b"] = [answer(503)]
    h.scripts["c"] = [answer(200)]
    ex = h.exchange()
    resp = await h.chain(ex)
    assert resp.status == 200 and resp.upstream == "c"
    assert h.calls == [("a", "gpt-4o", "gpt-4o"), ("b", "small", "small"), ("c", "gpt-4o", "gpt-4o")]
    assert ex.target.upstream == "c" and ex.response_headers["x-gateway-attempts"] == "3"


async def test_open_breaker_fails_over_at_once() -> None:
    """An open breaker skips its upstream without an attempt or a wait."""
    h = Harness(breaker={"consecutive_failures": 1}, fallbacks=[{"upstream": "b"}])
    h.res.breakers["a"].admit().settle("failure")
    h.scripts["b"] = [answer(200)]
    ex = h.exchange()
    assert (await h.chain(ex)).status == 200
    assert h.calls == [("b", "gpt-4o", "gpt-4o")] and h.clock.sleeps == []
    assert ex.response_headers == {"x-gateway-attempts": "1"}


async def test_open_breaker_without_fallback_is_503_with_retry_after() -> None:
    """With nowhere to go, the breaker's 503 + Retry-After goes back; no x-should-retry (we sent nothing)."""
    h = Harness(breaker={"consecutive_failures": 1, "open_s": 7})
    h.res.breakers["a"].admit().settle("failure")
    with pytest.raises(CircuitOpen) as exc:
        await h.chain(h.exchange())
    assert exc.value.status == 503 and exc.value.headers["retry-after"] == "7"
    assert exc.value.headers["x-gateway-attempts"] == "0" and "x-should-retry" not in exc.value.headers
    assert h.calls == []


async def test_breaker_opening_mid_retries_stops_retrying() -> None:
    """The policy asks the breaker before each retry: once it opens, no more attempts there."""
    h = Harness(retry={"max_attempts": 5}, breaker={"consecutive_failures": 2}, fallbacks=[{"upstream": "b"}])
    h.scripts["a"] = [answer(503), answer(503)]
    h.scripts["b"] = [answer(200)]
    resp = await h.chain(h.exchange())
    assert resp.status == 200 and [c[0] for c in h.calls] == ["a", "a", "b"]
    assert h.res.breakers["a"].state == "open"


async def test_local_replies_propagate_untouched() -> None:
    """The gateway's own rejections from inner layers are neither retried nor failed over."""
    h = Harness(fallbacks=[{"upstream": "b"}])
    h.scripts["a"] = [LocalReply(429, "queue full")]
    with pytest.raises(LocalReply) as exc:
        await h.chain(h.exchange())
    assert exc.value.status == 429 and len(h.calls) == 1
    assert h.res.breakers["a"].consecutive == 0


async def test_cancel_during_backoff_makes_no_more_attempts() -> None:
    """A client that leaves while we wait to retry cancels the wait; nothing else is sent."""
    h = Harness()
    first = answer(503)
    h.scripts["a"] = [first, answer(200)]

    async def forever(_: float) -> None:
        await asyncio.Event().wait()

    h.policy.attempts.sleep = forever
    task = asyncio.create_task(h.chain(h.exchange()))
    await until(lambda: first.body.closed, interval=0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(h.calls) == 1


async def test_cancel_while_peeking_frees_the_probe() -> None:
    """A client gone before the first token closes the body and frees a half-open probe slot."""
    h = Harness(breaker={"consecutive_failures": 1, "half_open_probes": 1})
    breaker = h.res.breakers["a"]
    breaker.admit().settle("failure")
    h.clock.now = breaker.open_until
    stalled = answer(200, ROLE, sse=True, stall=True)
    h.scripts["a"] = [stalled]
    ex = h.exchange(stream=True)
    task = asyncio.create_task(h.chain(ex))
    await until(lambda: bool(h.calls), interval=0)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stalled.body.closed and PENDING_TICKET not in ex.state
    assert breaker.state == "half_open" and not breaker.rejecting()  # the probe slot is free again


def decisions(h: Harness) -> Callable[[str], float]:
    return lambda d: h.sample("gateway_policy_decisions_total", policy="retry", decision=d)


async def test_decisions_counted() -> None:
    """Every retry decision is counted: retry, attempts_spent, recovered, gave_up."""
    h = Harness(retry={"max_attempts": 2})
    h.scripts["a"] = [answer(503), answer(200), answer(503), answer(503)]
    await h.chain(h.exchange())
    await h.chain(h.exchange())
    count = decisions(h)
    assert count("retry") == 2 and count("recovered") == 1 and count("attempts_spent") == 1
    assert count("gave_up") == 1


TOO_LONG = b'{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}'


async def test_context_length_exceeded_goes_to_the_context_fallback_not_the_fallbacks() -> None:
    """A "prompt too long" 400 skips the same-size fallbacks and goes to the larger-window model, once."""
    h = Harness(fallbacks=[{"upstream": "b"}], context_fallbacks=[{"upstream": "c", "model": "big"}])
    rejected = answer(400, TOO_LONG)
    h.scripts["a"] = [rejected]
    h.scripts["c"] = [answer(200)]
    ex = h.exchange()
    resp = await h.chain(ex)
    assert resp.status == 200 and rejected.body.closed
    assert h.calls == [("a", "gpt-4o", "gpt-4o"), ("c", "big", "big")]
    assert h.sample("gateway_policy_decisions_total", policy="retry", decision="context_fallback") == 1


async def test_context_fallbacks_tried_in_order_then_the_last_400_goes_back() -> None:
    """Each context fallback is tried once; when none fits, the client gets the last 400 byte for byte."""
    h = Harness(context_fallbacks=[{"upstream": "b", "model": "big"}, {"upstream": "c", "model": "bigger"}])
    h.scripts["a"] = [answer(400, TOO_LONG)]
    h.scripts["b"] = [answer(400, TOO_LONG)]
    h.scripts["c"] = [answer(400, TOO_LONG)]
    resp = await h.chain(h.exchange())
    assert resp.status == 400 and await read(resp) == TOO_LONG
    assert [c[1] for c in h.calls] == ["gpt-4o", "big", "bigger"]


async def test_other_400_passes_through_even_with_context_fallbacks() -> None:
    """A content-filter 400 (read to classify it) still reaches the client untouched, one call."""
    h = Harness(context_fallbacks=[{"upstream": "c", "model": "big"}])
    filtered = b'{"error":{"message":"filtered","type":"invalid_request_error","code":"content_filter"}}'
    h.scripts["a"] = [answer(400, filtered)]
    resp = await h.chain(h.exchange())
    assert resp.status == 400 and await read(resp) == filtered and len(h.calls) == 1


async def test_context_length_exceeded_without_context_fallbacks_is_not_read() -> None:
    """Positive control of the opt-in: no context_fallbacks, the 400 passes through, no fallback used."""
    h = Harness(fallbacks=[{"upstream": "b"}])
    h.scripts["a"] = [answer(400, TOO_LONG)]
    resp = await h.chain(h.exchange())
    assert resp.status == 400 and await read(resp) == TOO_LONG and len(h.calls) == 1


async def test_hedge_wins_over_a_late_primary_and_the_answer_names_the_fallback() -> None:
    """The primary's first token is late: the hedge on b commits first; a's body is closed."""
    h = Harness(fallbacks=[{"upstream": "b", "model": "small"}], hedge={"after_s": 0.01})
    late = answer(200, ROLE, sse=True, stall=True)
    h.scripts["a"] = [late]
    h.scripts["b"] = [answer(200, ROLE, TEXT, DONE, sse=True)]
    ex = h.exchange(stream=True)
    resp = await h.chain(ex)
    assert await read(resp) == ROLE + TEXT + DONE and late.body.closed
    assert (ex.target.upstream, ex.target.model) == ("b", "small")
    assert ex.response_headers == {"x-gateway-attempts": "2", "x-gateway-hedge": "hedge_won"}
    assert h.sample("gateway_hedges_total", route="gpt-4o", outcome="hedge_won") == 1
    # the slow primary lost, it did not fail: its breaker ticket was settled neutral, b's as a success
    assert h.res.breaker("a").consecutive == 0 and h.res.breaker("a")._calls == 0
    assert h.res.breaker("b")._calls == 1 and ex.state.get(PENDING_TICKET) is None


async def test_a_hedged_primary_is_in_flight_from_its_pick() -> None:
    """Two streams arrive together on a route of two deployments: the second one's pick sees the first
    one's deployment in flight, although the first one's attempt runs in the race's task, not started yet."""
    h = Harness(targets=[{"upstream": "a"}, {"upstream": "b"}], fallbacks=[{"upstream": "c"}],
                hedge={"after_s": 5.0})
    for name in "ab":
        h.scripts[name] = [answer(200, ROLE, TEXT, DONE, sse=True)]
    first, second = await asyncio.gather(h.chain(h.exchange(stream=True)), h.chain(h.exchange(stream=True)))
    assert sorted(ex_upstream for ex_upstream, _, _ in h.calls) == ["a", "b"]  # one each, not both on one
    assert (h.res.load("a").in_flight, h.res.load("b").in_flight) == (1, 1)  # their bodies are open
    await read(first)
    await read(second)
    assert (h.res.load("a").in_flight, h.res.load("b").in_flight) == (0, 0)


async def test_a_hedged_request_cancelled_in_the_race_is_not_left_in_flight() -> None:
    h = Harness(targets=[{"upstream": "a"}, {"upstream": "b"}], hedge={"after_s": 5.0})
    h.scripts["a"] = h.scripts["b"] = [answer(200, ROLE, sse=True, stall=True)]
    task = asyncio.ensure_future(h.chain(h.exchange(stream=True)))
    await asyncio.sleep(0)  # the request has picked and is in the race
    assert h.res.load("a").in_flight + h.res.load("b").in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (h.res.load("a").in_flight, h.res.load("b").in_flight) == (0, 0)


async def test_a_race_that_fails_before_the_primary_ran_gives_its_pick_back() -> None:
    """The primary's task never ran (the race failed first): the count taken at the pick is returned."""
    h = Harness(targets=[{"upstream": "a"}, {"upstream": "b"}], hedge={"after_s": 5.0}, fake_hedge_timer=True)

    def broken_timer(seconds: float) -> Any:
        raise RuntimeError("no timer")

    h.policy.hedge_sleep = broken_timer
    with pytest.raises(RuntimeError):
        await h.chain(h.exchange(stream=True))
    assert h.calls == [] and (h.res.load("a").in_flight, h.res.load("b").in_flight) == (0, 0)


async def test_hedge_counts_against_the_retry_budget() -> None:
    """With the budget spent, the late primary is waited for, not hedged (and it is counted)."""
    h = Harness(retry={"budget_floor": 0, "budget_ratio": 0.0}, fallbacks=[{"upstream": "b"}],
                hedge={"after_s": 0.01})
    gate = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, gate.set)

    class Late(Body):
        async def __anext__(self) -> bytes:
            await gate.wait()
            return await super().__anext__()

    h.scripts["a"] = [UpstreamResponse(200, {"content-type": "text/event-stream"}, Late(ROLE, TEXT, DONE))]
    ex = h.exchange(stream=True)
    resp = await h.chain(ex)
    assert await read(resp) == ROLE + TEXT + DONE and [c[0] for c in h.calls] == ["a"]
    assert ex.response_headers["x-gateway-hedge"] == "budget_exhausted"
    assert h.sample("gateway_retry_budget_exhausted_total", upstream="a") == 1


async def test_a_stream_on_a_route_with_a_fallback_is_hedged_after_10_s_by_default() -> None:
    """No ``hedge`` block: a stream whose first token is late races the fallback after 10 s (on the fake
    timer), not after the 60 s first-byte timeout; the late primary is closed."""
    h = Harness(fallbacks=[{"upstream": "b"}], fake_hedge_timer=True)
    late = answer(200, ROLE, sse=True, stall=True)
    h.scripts["a"] = [late]
    h.scripts["b"] = [answer(200, ROLE, TEXT, DONE, sse=True)]
    ex = h.exchange(stream=True)
    resp = await h.chain(ex)
    assert await read(resp) == ROLE + TEXT + DONE and late.body.closed and h.hedge_delays == [10.0]
    assert ex.target.upstream == "b" and ex.response_headers["x-gateway-hedge"] == "hedge_won"
    assert h.res.ttft._windows == {}  # a fixed delay keeps no TTFT window


async def test_a_primary_that_lost_the_race_is_recorded_for_max_extra_only() -> None:
    """With ``max_extra`` the window must hold the slow primaries too (at the time they lost, a lower
    bound), or its 1 - max_extra quantile would hedge more than max_extra; ``after: p95`` (the control)
    keeps only the primaries that committed, so a slow mode does not drag its percentile up."""
    cases = (({"max_extra": 0.1, "after_s": 0.5}, [0.5]), ({"after": "p95", "after_s": 0.5}, []))
    for hedge, recorded in cases:
        h = Harness(fallbacks=[{"upstream": "b"}], hedge=hedge, fake_hedge_timer=True)
        late = answer(200, ROLE, sse=True, stall=True)
        h.scripts["a"] = [late]
        h.scripts["b"] = [answer(200, ROLE, TEXT, DONE, sse=True)]
        ex = h.exchange(stream=True)
        resp = await h.chain(ex)
        assert await read(resp) == ROLE + TEXT + DONE
        assert ex.response_headers["x-gateway-hedge"] == "hedge_won"
        windows = {key: list(order) for (_, key), (order, _) in h.res.ttft._windows.items()}
        assert h.hedge_delays == [0.5] and windows.get("a", []) == recorded, hedge
        assert "b" in windows  # the hedge's own first token is recorded under its target either way


async def test_default_hedge_leaves_non_streams_and_disabled_routes_alone() -> None:
    """Positive controls of the default: a non-stream answer (no first-token signal) is not hedged, nor is
    a stream on a route with ``hedge: {enabled: false}``, whose silent primary waits for first_byte_s."""
    h = Harness(fallbacks=[{"upstream": "b"}], fake_hedge_timer=True)
    h.scripts["a"] = [answer(200)]
    ex = h.exchange()
    assert await read(await h.chain(ex)) == b'{"ok":true}' and h.hedge_delays == []
    assert "x-gateway-hedge" not in ex.response_headers and ex.target.upstream == "a"
    off = Harness(fallbacks=[{"upstream": "b"}], hedge={"enabled": False}, timeouts={"first_byte_s": 0.05},
                  fake_hedge_timer=True)
    late = answer(200, ROLE, sse=True, stall=True)
    off.scripts["a"] = [late]
    off.scripts["b"] = [answer(200, ROLE, TEXT, DONE, sse=True)]
    ex = off.exchange(stream=True)
    assert await read(await off.chain(ex)) == ROLE + TEXT + DONE and late.body.closed
    assert off.hedge_delays == [] and "x-gateway-hedge" not in ex.response_headers
    assert ex.response_headers["x-gateway-attempts"] == "2"  # moved on after the first-byte timeout
