"""Failover that rescues (issue 18): each fault of the issue's "Why", against the real gateway.

The fake provider plays two deployments: the primary serves model ``gpt-4o`` (upstream
``primary``), the fallback serves ``gpt-4o-mini`` (upstream ``backup``); scripted faults match
the primary's model only. Timeouts are scaled down (1 s stands for the issue's 30 s), so the
whole module runs in about 30 s. Each test asserts the rescued answer through the openai
SDK (or the clean error), the attempts each deployment saw and the wall time.

Cases: 429 with Retry-After once, 429 always, 500 once, 503 always, reset before headers, no
response at all, first token after 20 s (move on; hedged; both with the default settings, in real
time: the one 10 s test), stream cut after 40 of 60 tokens,
stall mid-answer, malformed chunk, error event mid-stream, end without [DONE] (continued),
a cut stream whose fallback rejects prefill (original error), 400 context_length_exceeded
(context_fallbacks), 400 content filter (passed through), primary down 60 s then healthy,
503 then fallback with usage charged to the deployment that answered.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from gateway.exchange import Exchange
from gateway.mock import MockServer
from gateway.telemetry.logging import request_fields
from policies.ledger.record import record_of
from policies.resilience.config import CircuitBreakerConfig
from policies.resilience.registry import COMPONENT as RESILIENCE
from tests.support.servers import InProcessGateway
from tests.support.until import until

CHAT: list[Any] = [{"role": "user", "content": "Say hello"}]
FAST = {"max_attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.05}
PRIMARY, FALLBACK = "gpt-4o", "gpt-4o-mini"
GatewayFactory = Callable[..., Awaitable[InProcessGateway]]


async def two_deployments(make_gateway: GatewayFactory, mock: MockServer, *, first_byte_s: float = 1.0,
                          route: dict[str, Any] | None = None, backup: dict[str, Any] | None = None,
                          **extra: Any) -> InProcessGateway:
    up = {"base_url": mock.url, "api_key": "sk-upstream-secret", "retry": FAST,
          "timeouts": {"first_byte_s": first_byte_s, "idle_s": 1.0}}
    return await make_gateway(
        upstreams={"primary": up, "backup": {**up, **(backup or {})}},
        routes=[{"match": {"model": PRIMARY}, "upstream": "primary",
                 "fallbacks": [{"upstream": "backup", "model": FALLBACK}], **(route or {})}], **extra)


async def queue_faults(mock: MockServer, fault: str, times: int = -1, model: str = PRIMARY) -> None:
    async with aiohttp.ClientSession() as session:
        entry = {"fault": fault, "times": times, "match": {"model": model}}
        async with session.post(mock.base_url + "/_mock/faults", json={"faults": [entry]}) as resp:
            assert resp.status == 200


def sdk(gw: InProcessGateway) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)


def seen(mock: MockServer) -> list[str | None]:
    """The model of each attempt the provider saw, i.e. which deployment it reached."""
    return [a.model for a in mock.recorder.attempts]


async def stream_text(gw: InProcessGateway, **body: Any) -> tuple[str, dict[str, str], float]:
    started = time.perf_counter()
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=PRIMARY, messages=CHAT, stream=True, **body)
        text = ""
        async for chunk in raw.parse():
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    return text, dict(raw.headers), time.perf_counter() - started


@pytest.mark.parametrize("fault", ["stall_before_first_byte_ms=20000", "ttft_ms=20000"])
async def test_silent_primary_moves_on_after_one_first_byte_timeout(
        make_gateway: GatewayFactory, mock_upstream: MockServer, fault: str) -> None:
    """No byte (or no first token) from the primary: one first-byte timeout, then the fallback answers.

    Before issue 18 the same dead primary was waited for 3 times (3 x first_byte_s) before failing over.
    """
    gw = await two_deployments(make_gateway, mock_upstream)
    await queue_faults(mock_upstream, fault)
    text, headers, elapsed = await stream_text(gw)
    assert text and headers["x-gateway-upstream"] == "backup" and headers["x-gateway-attempts"] == "2"
    assert seen(mock_upstream) == [PRIMARY, FALLBACK]
    assert 1.0 <= elapsed < 1.8, elapsed  # one first_byte_s, not three


async def test_503_once_is_retried_on_the_same_primary(make_gateway: GatewayFactory,
                                                       mock_upstream: MockServer) -> None:
    """Positive control: a "try again" error stays on the primary (a retry, no failover)."""
    gw = await two_deployments(make_gateway, mock_upstream)
    await queue_faults(mock_upstream, "status=503", times=1)
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model=PRIMARY, messages=CHAT)
    assert raw.parse().choices[0].message.content and raw.headers["x-gateway-upstream"] == "primary"
    assert seen(mock_upstream) == [PRIMARY, PRIMARY]


async def test_400_passed_through_not_retried(make_gateway: GatewayFactory,
                                              mock_upstream: MockServer) -> None:
    """A content-filter 400 goes back to the client once: no retry, no fallback, no context fallback."""
    gw = await two_deployments(make_gateway, mock_upstream,
                               route={"context_fallbacks": [{"upstream": "backup", "model": "gpt-4.1"}]})
    await queue_faults(mock_upstream, "status=400;error_code=content_filter")
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(model=PRIMARY, messages=CHAT)
    assert err.value.code == "content_filter"
    assert seen(mock_upstream) == [PRIMARY]


async def test_context_length_exceeded_goes_to_the_larger_window_model(
        make_gateway: GatewayFactory, mock_upstream: MockServer) -> None:
    """A provider 400 context_length_exceeded is answered by the route's context_fallbacks model."""
    gw = await two_deployments(make_gateway, mock_upstream,
                               route={"context_fallbacks": [{"upstream": "backup", "model": "gpt-4.1"}]})
    await queue_faults(mock_upstream, "status=400;error_code=context_length_exceeded")
    started = time.perf_counter()
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model=PRIMARY, messages=CHAT)
    completion = raw.parse()
    assert completion.choices[0].message.content and completion.model == "gpt-4.1"
    assert raw.headers["x-gateway-upstream"] == "backup" and seen(mock_upstream) == [PRIMARY, "gpt-4.1"]
    assert time.perf_counter() - started < 2.0


async def test_context_length_exceeded_without_context_fallbacks_reaches_the_client(
        make_gateway: GatewayFactory, mock_upstream: MockServer) -> None:
    """Positive control: without context_fallbacks the 400 is the client's answer (no same-size fallback)."""
    gw = await two_deployments(make_gateway, mock_upstream)
    await queue_faults(mock_upstream, "status=400;error_code=context_length_exceeded")
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(model=PRIMARY, messages=CHAT)
    assert err.value.code == "context_length_exceeded" and seen(mock_upstream) == [PRIMARY]


async def test_primary_down_then_healthy_gets_traffic_back_soon(make_gateway: GatewayFactory,
                                                               mock_upstream: MockServer) -> None:
    """The issue's "down 60 s, a request every 4 s, 20 requests" scaled by 1/20, with the breaker's default
    intervals scaled the same way (open 4 s -> 0.2 s, cap 6 s -> 0.3 s): every request is answered, and the
    recovered primary serves again within 0.5 s (10 s scaled) of recovering."""
    scale = 1 / 20
    defaults = CircuitBreakerConfig()
    scaled = {"open_s": defaults.open_s * scale, "max_open_s": defaults.max_open_s * scale}
    gw = await make_gateway(
        upstreams={name: {"base_url": mock_upstream.url, "api_key": "k", "retry": FAST,
                          "circuit_breaker": scaled} for name in ("primary", "backup")},
        routes=[{"match": {"model": PRIMARY}, "upstream": "primary",
                 "fallbacks": [{"upstream": "backup", "model": FALLBACK}]}])
    async with aiohttp.ClientSession() as session:
        entry = {"fault": "status=503", "times": -1, "match": {"model": PRIMARY}, "for_s": 60 * scale}
        async with session.post(mock_upstream.base_url + "/_mock/faults", json={"faults": [entry]}) as resp:
            assert resp.status == 200
    started = time.time()
    served_by: list[str] = []
    async with sdk(gw) as client:
        for i in range(20):  # paced load: request i leaves at i x 4 s (scaled)
            await asyncio.sleep(max(0.0, started + i * 4 * scale - time.time()))
            raw = await client.chat.completions.with_raw_response.create(model=PRIMARY, messages=CHAT)
            assert raw.parse().choices[0].message.content
            served_by.append(raw.headers["x-gateway-upstream"])
    healthy = [a.time for a in mock_upstream.recorder.attempts if a.model == PRIMARY and a.status == 200]
    assert "backup" in served_by and served_by[-1] == "primary"
    assert healthy and healthy[0] - (started + 60 * scale) <= 10 * scale, healthy[0] - started


def sample(gw: InProcessGateway, name: str, **labels: str) -> float:
    return gw.state.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_hedged_first_token_answers_from_the_fallback_and_closes_the_primary(
        make_gateway: GatewayFactory, mock_upstream: MockServer) -> None:
    """A first token after 20 s (first_byte_s 30 s as in the issue): with ``hedge: {after_s: 0.3}`` the
    fallback starts at 0.3 s and answers; the primary's connection is closed; metric, header say so."""
    gw = await two_deployments(make_gateway, mock_upstream, first_byte_s=30.0,
                               route={"hedge": {"after_s": 0.3}})
    await queue_faults(mock_upstream, "ttft_ms=20000", times=1)
    text, headers, elapsed = await stream_text(gw)
    assert text and headers["x-gateway-upstream"] == "backup" and headers["x-gateway-hedge"] == "hedge_won"
    assert headers["x-gateway-attempts"] == "2" and seen(mock_upstream) == [PRIMARY, FALLBACK]
    assert 0.3 <= elapsed < 1.5, elapsed
    recorder = mock_upstream.recorder
    await recorder.wait_for(lambda: recorder.attempts[0].outcome is not None, 3.0)
    assert recorder.attempts[0].outcome == "client_disconnected"  # the loser's socket was closed
    assert sample(gw, "gateway_hedges_total", route=PRIMARY, outcome="hedge_won") == 1
    # positive control: a healthy primary is not hedged
    text, headers, _ = await stream_text(gw)
    assert text and headers["x-gateway-upstream"] == "primary" and "x-gateway-hedge" not in headers
    assert len(recorder.attempts) == 3 and sample(gw, "gateway_hedges_total", route=PRIMARY,
                                                   outcome="not_needed") == 1


async def test_max_extra_hedges_after_the_routes_own_percentile(
        make_gateway: GatewayFactory, mock_upstream: MockServer) -> None:
    """``hedge: {max_extra: 0.25, after_s: 5}``: before 4 first tokens were seen the fixed 5 s applies
    (the healthy ones are not hedged: the control); then the trigger is the route's 75th percentile, a few
    ms, so a first token after 20 s is raced at once and answered by the fallback well before 5 s."""
    gw = await two_deployments(make_gateway, mock_upstream, first_byte_s=30.0,
                               route={"hedge": {"max_extra": 0.25, "after_s": 5.0, "min_samples": 4}})
    for _ in range(4):
        text, headers, _ = await stream_text(gw)
        assert text and headers["x-gateway-upstream"] == "primary" and "x-gateway-hedge" not in headers
    await queue_faults(mock_upstream, "ttft_ms=20000", times=1)
    text, headers, elapsed = await stream_text(gw)
    assert text and headers["x-gateway-upstream"] == "backup" and headers["x-gateway-hedge"] == "hedge_won"
    assert elapsed < 2.0, elapsed  # the adaptive trigger, not after_s (5 s)
    assert seen(mock_upstream) == [PRIMARY] * 5 + [FALLBACK]
    assert sample(gw, "gateway_hedges_total", route=PRIMARY, outcome="not_needed") == 4


async def test_with_default_settings_a_silent_or_late_primary_is_answered_by_the_fallback(
        make_gateway: GatewayFactory, mock_upstream: MockServer) -> None:
    """The issue's bar with DEFAULT settings plus one fallback (no hedge block, first_byte_s 60 s): a primary
    that sends no byte (for 120 s) is answered within 15 s, one whose first token comes after 20 s within
    40 s. Both run at once, in real time (the default hedge starts the fallback after 10 s)."""
    up = {"base_url": mock_upstream.url, "api_key": "sk-upstream-secret"}
    gw = await make_gateway(upstreams={"primary": up, "backup": up}, routes=[
        {"match": {"model": PRIMARY}, "upstream": "primary", "fallbacks": [{"upstream": "backup",
                                                                            "model": FALLBACK}]}])
    await queue_faults(mock_upstream, "stall_before_first_byte_ms=120000", times=1)
    await queue_faults(mock_upstream, "ttft_ms=20000", times=1)
    answers = await asyncio.gather(stream_text(gw), stream_text(gw))
    for text, headers, elapsed in answers:
        assert text and headers["x-gateway-upstream"] == "backup"
        assert headers["x-gateway-hedge"] == "hedge_won" and 10.0 <= elapsed < 15.0, elapsed
    assert sorted(seen(mock_upstream)) == [PRIMARY, PRIMARY, FALLBACK, FALLBACK]
    recorder = mock_upstream.recorder
    await recorder.wait_for(lambda: all(a.outcome is not None for a in recorder.attempts), 3.0)
    assert [a.outcome for a in recorder.attempts if a.model == PRIMARY] == ["client_disconnected"] * 2
    # positive control: a healthy primary answers itself, unhedged, at once
    text, headers, elapsed = await stream_text(gw)
    assert text and headers["x-gateway-upstream"] == "primary" and "x-gateway-hedge" not in headers
    assert elapsed < 2.0 and sample(gw, "gateway_hedges_total", route=PRIMARY, outcome="not_needed") == 1


CONTINUES = {"continuation": "prefill"}
BREAKS = {
    "cut_after_40_of_60": "reset_after_chunks=41",  # the role chunk, then 40 tokens
    "stall_mid_answer": "stall_after_chunks=41;stall_ms=30000",  # idle_s is 1 s here (30 s scaled)
    "malformed_chunk": "malformed_after_chunks=21",
    "error_event_mid_stream": "error_after_chunks=21",
    "ends_without_done": "end_after_chunks=21",
}


async def whole_answer(mock: MockServer, max_tokens: int) -> str:
    async with AsyncOpenAI(base_url=mock.url, api_key="k", max_retries=0) as direct:
        done = await direct.chat.completions.create(model=PRIMARY, messages=CHAT, max_tokens=max_tokens)
    mock.recorder.clear()
    return done.choices[0].message.content or ""


@pytest.mark.parametrize("case", list(BREAKS))
async def test_broken_stream_is_continued_by_the_fallback(make_gateway: GatewayFactory,
                                                          mock_upstream: MockServer, case: str) -> None:
    """The client's reassembled text is the unbroken answer: the primary's part, then the fallback's
    continuation (asked with the text so far as an assistant prefill), same id, no repeat, no loss."""
    gw = await two_deployments(make_gateway, mock_upstream, backup=CONTINUES)
    expected = await whole_answer(mock_upstream, 60)
    await queue_faults(mock_upstream, BREAKS[case])
    started = time.perf_counter()
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model=PRIMARY, messages=CHAT, stream=True,
                                                      max_tokens=60)
        ids, text, finish = set(), "", None
        async for chunk in stream:
            ids.add(chunk.id)
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
    assert text == expected and len(ids) == 1 and finish == "length"
    assert time.perf_counter() - started < 3.0
    continued = mock_upstream.recorder.attempts[1].json
    assert seen(mock_upstream) == [PRIMARY, FALLBACK] and continued["messages"][-1]["role"] == "assistant"
    assert expected.startswith(continued["messages"][-1]["content"]) and continued["max_tokens"] < 60
    assert sample(gw, "gateway_continuations_total", route=PRIMARY, outcome="continued") == 1


async def test_continued_stream_is_marked_and_ends_with_done(make_gateway: GatewayFactory,
                                                             mock_upstream: MockServer) -> None:
    """On the wire: one SSE comment names the continuation, then [DONE]; the usage is summed. The request's
    log line and ledger record name the upstream whose stream broke and carry the same summed usage."""
    gw = await two_deployments(make_gateway, mock_upstream, backup=CONTINUES)
    finished: list[Exchange] = []
    gw.state.sinks.append(finished.append)
    await queue_faults(mock_upstream, BREAKS["cut_after_40_of_60"])
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.base_url + "/chat/completions", json={
                "model": PRIMARY, "messages": CHAT, "stream": True, "max_tokens": 60,
                "stream_options": {"include_usage": True}}) as resp:
            raw = (await resp.read()).decode()
    frames = [f for f in raw.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    assert frames[-2] == ": x-gateway-continued upstream=backup after=reset_mid_stream"
    usage = json.loads(frames[-3].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] == 60 and '"error"' not in raw
    await until(lambda: bool(finished), timeout=3.0)
    line, record = request_fields(finished[0]), record_of(finished[0], time.time(), None)
    assert (line["upstream"], line["continued_from"], line["completion_tokens"]) == ("backup", "primary", 60)
    assert (record.upstream, record.continued_from, record.completion) == ("backup", "primary", 60)
    assert record.prompt == usage["prompt_tokens"]


async def test_cut_stream_whose_fallback_rejects_prefill_ends_with_the_original_error(
        make_gateway: GatewayFactory, mock_upstream: MockServer) -> None:
    """No target can continue: the client's stream ends with the *original* failure, not the 400."""
    gw = await two_deployments(make_gateway, mock_upstream, backup=CONTINUES)
    await queue_faults(mock_upstream, BREAKS["cut_after_40_of_60"])
    await queue_faults(mock_upstream, "reject_prefill", model=FALLBACK)
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.base_url + "/chat/completions", json={
                "model": PRIMARY, "messages": CHAT, "stream": True, "max_tokens": 60}) as resp:
            raw = (await resp.read()).decode()
    frames = [f for f in raw.split("\n\n") if f]
    assert "[DONE]" not in raw and json.loads(frames[-1].removeprefix("data: "))["error"]["code"] == \
        "reset_mid_stream"
    assert seen(mock_upstream) == [PRIMARY, FALLBACK] and mock_upstream.recorder.attempts[1].status == 400
    assert sample(gw, "gateway_continuations_total", route=PRIMARY, outcome="no_target") == 1


async def test_without_continuation_a_cut_stream_still_ends_with_an_error(make_gateway: GatewayFactory,
                                                                          mock_upstream: MockServer) -> None:
    """Positive control: no fallback can continue (the default): error event, no [DONE]."""
    gw = await two_deployments(make_gateway, mock_upstream)
    await queue_faults(mock_upstream, BREAKS["cut_after_40_of_60"])
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model=PRIMARY, messages=CHAT, stream=True,
                                                      max_tokens=60)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    assert seen(mock_upstream) == [PRIMARY]


# fault on the primary, how many times, the deployments the provider saw, who answered
BEFORE_FIRST_BYTE = {
    "429_retry_after_once": ("status=429;retry_after=1", 1, [PRIMARY, PRIMARY], "primary"),
    "429_always": ("status=429", -1, [PRIMARY] * 3 + [FALLBACK], "backup"),
    "500_once": ("status=500", 1, [PRIMARY, PRIMARY], "primary"),
    "503_always": ("status=503", -1, [PRIMARY] * 3 + [FALLBACK], "backup"),
    "reset_before_headers": ("reset_before_headers", 1, [PRIMARY, PRIMARY], "primary"),
}


@pytest.mark.parametrize("case", list(BEFORE_FIRST_BYTE))
async def test_faults_before_the_first_byte(make_gateway: GatewayFactory, mock_upstream: MockServer,
                                            case: str) -> None:
    """"Try again" faults stay on the primary; a primary that keeps failing hands over to the fallback,
    which is charged the usage (the finished record names the deployment that answered)."""
    gw = await two_deployments(make_gateway, mock_upstream)
    finished: list[Exchange] = []
    gw.state.sinks.append(finished.append)
    fault, times, expected, served_by = BEFORE_FIRST_BYTE[case]
    await queue_faults(mock_upstream, fault, times=times)
    started = time.perf_counter()
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model=PRIMARY, messages=CHAT)
    assert raw.parse().choices[0].message.content and raw.headers["x-gateway-upstream"] == served_by
    assert seen(mock_upstream) == expected and time.perf_counter() - started < 3.0
    await until(lambda: bool(finished), timeout=3.0)
    record = finished[0]
    assert record.target.upstream == served_by and record.record.usage is not None
    assert record.target.model == (FALLBACK if served_by == "backup" else PRIMARY)


async def deployments_gateway(make_gateway: GatewayFactory, mock: MockServer) -> InProcessGateway:
    """One route, two deployments of the model (told apart at the provider by the model they get)."""
    up = {"base_url": mock.url, "api_key": "sk-upstream-secret", "retry": FAST}
    return await make_gateway(
        upstreams={"east": up, "west": up},
        routes=[{"match": {"model": PRIMARY}, "upstream": "east",
                 "targets": [{"upstream": "east", "model": "gpt-4o-east"},
                             {"upstream": "west", "model": "gpt-4o-west"}]}])


async def test_deployments_share_concurrent_load(make_gateway: GatewayFactory,
                                                 mock_upstream: MockServer) -> None:
    """Concurrent slow streams spread over both deployments (least in flight); each answer names its own."""
    gw = await deployments_gateway(make_gateway, mock_upstream)
    async with aiohttp.ClientSession() as session:
        async def one() -> str:
            async with session.post(gw.base_url + "/chat/completions",
                                    headers={"x-mock-fault": "ttft_ms=300"},
                                    json={"model": PRIMARY, "messages": CHAT, "stream": True}) as resp:
                body = await resp.read()
                assert resp.status == 200 and body.endswith(b"data: [DONE]\n\n")
                return resp.headers["x-gateway-upstream"]

        served = await asyncio.gather(*(one() for _ in range(8)))
    counts = {name: served.count(name) for name in ("east", "west")}
    assert counts["east"] >= 3 and counts["west"] >= 3, counts
    by_model = [a.model for a in mock_upstream.recorder.attempts]
    assert by_model.count("gpt-4o-east") == counts["east"] and by_model.count("gpt-4o-west") == counts["west"]
    loads = gw.state.components[RESILIENCE].loads
    assert loads["east"].in_flight == 0 and loads["west"].in_flight == 0  # every body's end was counted


async def test_deployment_with_open_breaker_is_skipped(make_gateway: GatewayFactory,
                                                       mock_upstream: MockServer) -> None:
    """One deployment 503s: its requests move to the other; once its breaker opens it gets none."""
    gw = await deployments_gateway(make_gateway, mock_upstream)
    await queue_faults(mock_upstream, "status=503", model="gpt-4o-east")
    async with sdk(gw) as client:
        for _ in range(10):
            raw = await client.chat.completions.with_raw_response.create(model=PRIMARY, messages=CHAT)
            assert raw.parse().choices[0].message.content and raw.headers["x-gateway-upstream"] == "west"
    east = [a for a in mock_upstream.recorder.attempts if a.model == "gpt-4o-east"]
    assert len(east) <= 5 and gw.state.components[RESILIENCE].breakers["east"].state == "open"


async def test_deployment_with_a_paused_quota_is_skipped(make_gateway: GatewayFactory,
                                                         mock_upstream: MockServer) -> None:
    """East is the faster deployment, so it is picked first; a provider 429 (Retry-After 30 s) pauses its
    quota: that request moves on to west, and the next ones go to west first while the pause lasts."""
    up = {"base_url": mock_upstream.url, "api_key": "sk-upstream-secret", "rate_limit": {"rpm": 6000},
          "retry": {**FAST, "max_retry_after_s": 1}}  # 30 s does not fit: the 429 moves on at once
    gw = await make_gateway(upstreams={"east": up, "west": up}, routes=[
        {"match": {"model": PRIMARY}, "upstream": "east", "targets": [
            {"upstream": "east", "model": "gpt-4o-east"}, {"upstream": "west", "model": "gpt-4o-west"}]}])
    await queue_faults(mock_upstream, "ttft_ms=100", model="gpt-4o-west")

    async def served_by() -> tuple[str, str]:
        async with sdk(gw) as client:
            raw = await client.chat.completions.with_raw_response.create(model=PRIMARY, messages=CHAT)
        assert raw.parse().choices[0].message.content
        return raw.headers["x-gateway-upstream"], raw.headers["x-gateway-attempts"]

    for _ in range(4):  # until both deployments' latencies are known (an unknown one is tried first)
        await served_by()
    assert {"gpt-4o-east", "gpt-4o-west"} <= set(seen(mock_upstream))
    assert [await served_by() for _ in range(3)] == [("east", "1")] * 3  # positive control: east first
    await queue_faults(mock_upstream, "status=429;retry_after=30", times=1, model="gpt-4o-east")
    assert await served_by() == ("west", "2")  # east's 429, then west
    mock_upstream.recorder.clear()
    assert [await served_by() for _ in range(3)] == [("west", "1")] * 3
    assert seen(mock_upstream) == ["gpt-4o-west"] * 3  # east was not even asked
    assert sample(gw, "gateway_policy_decisions_total", policy="balance", decision="skip_paused_quota") == 3
    # positive control: without the skip, east (still first by latency) answers 429 from its paused queue
    gw.state.components[RESILIENCE].quota_paused = lambda _upstream: 0.0
    async with sdk(gw) as client:
        with pytest.raises(openai.RateLimitError, match="paused by its provider"):
            await client.chat.completions.create(model=PRIMARY, messages=CHAT)
    assert seen(mock_upstream) == ["gpt-4o-west"] * 3


@pytest.mark.parametrize("phase", ["hedge_race", "continuation"])
async def test_client_leaving_closes_every_attempt(make_gateway: GatewayFactory, mock_upstream: MockServer,
                                                   phase: str) -> None:
    """A client that leaves while a hedge races the primary, or while a continuation streams, frees both
    provider requests within 1 s and the request is recorded as gone."""
    gw = await two_deployments(make_gateway, mock_upstream, first_byte_s=30.0, backup=CONTINUES,
                               route={"hedge": {"after_s": 0.2}})
    finished: list[Exchange] = []
    gw.state.sinks.append(finished.append)
    if phase == "hedge_race":
        await queue_faults(mock_upstream, "ttft_ms=20000", times=1)
        await queue_faults(mock_upstream, "ttft_ms=20000", times=1, model=FALLBACK)
    else:
        await queue_faults(mock_upstream, BREAKS["cut_after_40_of_60"], times=1)
        await queue_faults(mock_upstream, "stall_after_chunks=3;stall_ms=20000", times=1, model=FALLBACK)
    recorder = mock_upstream.recorder
    session = aiohttp.ClientSession()
    task = asyncio.create_task(session.post(gw.base_url + "/chat/completions", json={
        "model": PRIMARY, "messages": CHAT, "stream": True, "max_tokens": 60}))
    await until(lambda: len(recorder.attempts) == 2 and recorder.attempts[1].events_sent >= 1, timeout=5.0,
                interval=0.005)
    resp = await task if phase == "continuation" else None
    if resp is not None:
        resp.close()
    task.cancel()
    await session.close()
    left_at = time.perf_counter()
    await until(lambda: all(a.outcome is not None for a in recorder.attempts) and bool(finished), timeout=3.0)
    assert time.perf_counter() - left_at < 1.0
    first = "client_disconnected" if phase == "hedge_race" else "fault:reset_after_chunks"
    assert [a.outcome for a in recorder.attempts] == [first, "client_disconnected"]
    assert finished[0].record.stream_outcome == "client_gone" and not gw.state.lifecycle.active


@pytest.mark.parametrize("with_fallback", [True, False])
async def test_precheck_sends_a_too_long_prompt_to_the_larger_window(
        make_gateway: GatewayFactory, mock_upstream: MockServer, with_fallback: bool) -> None:
    """The gateway's own pre-check (compression on, model windows known): a prompt over gpt-4o's budget goes
    whole to the context_fallbacks model that fits it; without one (control) it gets the gateway's 400
    context_length_exceeded (this conversation cannot be compressed enough), never a silent truncation."""
    route = {"context_fallbacks": [{"upstream": "backup", "model": "gpt-4.1"}]} if with_fallback else {}
    gw = await two_deployments(make_gateway, mock_upstream, route=route, budgets={"default_max_tokens": 100},
                               models={PRIMARY: {"context_window": 600},
                                       "gpt-4.1": {"context_window": 100000}})
    long_chat: list[Any] = [{"role": "user", "content": f"Old question {i}: " + "tell me more " * 30}
                            for i in range(8)]
    long_chat += [{"role": "assistant", "content": "Sure."}, {"role": "user", "content": "Say hello"}]
    async with sdk(gw) as client:
        if not with_fallback:
            with pytest.raises(openai.BadRequestError) as err:
                await client.chat.completions.create(model=PRIMARY, messages=long_chat)
            assert err.value.code == "context_length_exceeded" and seen(mock_upstream) == []
            return
        raw = await client.chat.completions.with_raw_response.create(model=PRIMARY, messages=long_chat)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-gateway-upstream"] == "backup" and seen(mock_upstream) == ["gpt-4.1"]
    assert mock_upstream.recorder.attempts[-1].json["messages"] == long_chat  # whole: nothing was dropped


@pytest.mark.parametrize("fault", ["reset_after_chunks=24", "error_after_chunks=24"])
async def test_broken_responses_stream_is_continued(make_gateway: GatewayFactory, mock_upstream: MockServer,
                                                    fault: str) -> None:
    """The Responses API stream: the deltas and the final response's output_text are the unbroken answer,
    under the primary's response and item ids."""
    gw = await two_deployments(make_gateway, mock_upstream, backup=CONTINUES)
    async with AsyncOpenAI(base_url=mock_upstream.url, api_key="k", max_retries=0) as direct:
        whole = await direct.responses.create(model=PRIMARY, input="Say hello", max_output_tokens=60)
    expected = whole.output_text
    mock_upstream.recorder.clear()
    await queue_faults(mock_upstream, fault)
    async with sdk(gw) as client:
        stream = await client.responses.create(model=PRIMARY, input="Say hello", stream=True,
                                               max_output_tokens=60)
        deltas, final, ids = "", None, set()
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas += event.delta
                ids.add(event.item_id)
            elif event.type == "response.created":
                created_id = event.response.id
            elif event.type in ("response.completed", "response.incomplete"):  # incomplete: max_output_tokens
                final = event.response
    assert final is not None and deltas == expected and final.output_text == expected
    assert final.id == created_id and len(ids) == 1 and final.output[0].id in ids
    assert seen(mock_upstream) == [PRIMARY, FALLBACK]
    assert mock_upstream.recorder.attempts[1].json["input"][-1]["role"] == "assistant"
