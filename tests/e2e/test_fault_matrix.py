"""The fault matrix of issue 5: each provider fault against the real gateway in front of the fake provider.

Every test asserts the status, how the body or stream ends, how many attempts the
provider saw, and the timing (generous bounds; backoffs are 10-50 ms here).
Clients are the openai SDK with max_retries=0 and raw aiohttp.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from gateway.exchange import Exchange
from gateway.mock import MockServer
from policies.resilience.registry import COMPONENT as RESILIENCE
from tests.support.servers import InProcessGateway, free_port
from tests.support.until import until

CHAT = [{"role": "user", "content": "Say hello"}]
FAST = {"max_attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.05}
GatewayFactory = Callable[..., Any]


def upstream(url: str, **extra: Any) -> dict[str, Any]:
    return {"base_url": url, "api_key": "sk-upstream-secret", "retry": FAST, **extra}


async def queue_faults(mock: MockServer, *faults: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(mock.base_url + "/_mock/faults", json={"faults": list(faults)}) as resp:
            assert resp.status == 200


async def post_chat(gw: InProcessGateway, *, stream: bool = False, fault: str | None = None,
                    model: str = "gpt-4o", **body: Any) -> tuple[int, dict[str, str], bytes, float]:
    headers = {"x-mock-fault": fault} if fault else {}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.base_url + "/chat/completions", headers=headers,
                                json={"model": model, "messages": CHAT, "stream": stream, **body}) as resp:
            data = await resp.read()
            return resp.status, dict(resp.headers), data, time.perf_counter() - started


def sdk(gw: InProcessGateway, **headers: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0, default_headers=headers)


def events_of(body: bytes) -> list[str]:
    return [e for e in body.decode().split("\n\n") if e.strip()]


def sample(gw: InProcessGateway, name: str, **labels: str) -> float:
    return gw.state.metrics.registry.get_sample_value(name, labels) or 0.0


def outcomes(mock: MockServer) -> list[str | None]:
    return [a.outcome for a in mock.recorder.attempts]


async def test_503_storm_budget_keeps_attempts_within_1_2x(make_gateway: GatewayFactory,
                                                          mock_upstream: MockServer) -> None:
    """A 503 storm (breaker in shadow mode) costs at most 1.2 x requests thanks to the retry budget."""
    shadow = upstream(mock_upstream.url, circuit_breaker={"enforce": False})
    gw = await make_gateway(upstreams={"mock": shadow})
    await queue_faults(mock_upstream, {"fault": "status=503", "times": -1})
    requests = 50
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            async with session.post(gw.base_url + "/chat/completions",
                                    json={"model": "gpt-4o", "messages": CHAT}) as resp:
                assert resp.status == 503
    assert requests < len(mock_upstream.recorder.attempts) <= 1.2 * requests
    assert sample(gw, "gateway_retry_budget_exhausted_total", upstream="mock") > 0
    decisions = {"policy": "circuit_breaker", "decision": "shadow_reject"}
    assert sample(gw, "gateway_policy_decisions_total", **decisions) > 0


async def test_503_storm_opens_breaker_fast_rejects_and_probes_once_per_interval(
        make_gateway: GatewayFactory, mock_upstream: MockServer) -> None:
    """Breaker opens at the 5th failure in a row, rejects in < 5 ms, then one probe per open interval."""
    open_s = 0.4
    gw = await make_gateway(upstreams={"mock": upstream(mock_upstream.url, circuit_breaker={
        "consecutive_failures": 5, "open_s": open_s, "max_open_s": open_s})})
    served: list[tuple[str, float]] = []
    gw.state.sinks.append(lambda ex: served.append((ex.record.error_kind,
                                                    ex.record.ended_at - ex.request.received_at)))
    await queue_faults(mock_upstream, {"fault": "status=503", "times": -1})
    async with aiohttp.ClientSession() as session:
        async def once() -> aiohttp.ClientResponse:
            async with session.post(gw.base_url + "/chat/completions",
                                    json={"model": "gpt-4o", "messages": CHAT}) as resp:
                await resp.read()
                return resp

        first = await once()
        assert first.headers["x-gateway-attempts"] == "3" and first.headers["x-should-retry"] == "false"
        await once()
        assert len(mock_upstream.recorder.attempts) == 5  # 3 + 2: the 5th failure opened it
        assert gw.state.components[RESILIENCE].breakers["mock"].state == "open"
        rejected = await once()
        assert rejected.status == 503 and int(rejected.headers["retry-after"]) >= 1
        assert rejected.headers["x-gateway-attempts"] == "0" and len(mock_upstream.recorder.attempts) == 5
        opened_at = time.time()
        while time.time() - opened_at < 3.2 * open_s:  # concurrent traffic for three open intervals
            await asyncio.gather(*(once() for _ in range(4)))
            await asyncio.sleep(0.01)
    open_times = sorted(d for kind, d in served if kind == "circuit_open")
    assert len(open_times) > 20 and open_times[len(open_times) // 2] < 0.005  # median, server side
    probes = [a.time for a in mock_upstream.recorder.attempts[5:]]
    assert 2 <= len(probes) <= 4
    gaps = [b - a for a, b in zip([opened_at, *probes], probes, strict=False)]
    assert all(gap >= 0.8 * open_s * 0.95 for gap in gaps), gaps  # one probe per open interval
    assert sample(gw, "gateway_circuit_transitions_total", upstream="mock", to="open") == 1 + len(probes)
    assert sample(gw, "gateway_circuit_state", upstream="mock") in (1, 2)


async def test_429_retry_after_1_retried_once_after_a_second(make_gateway: GatewayFactory,
                                                            mock_upstream: MockServer) -> None:
    """429 with Retry-After: 1 is retried once, >= 1 s later, and the client gets the 200."""
    gw = await make_gateway(upstreams={"mock": upstream(mock_upstream.url)})
    await queue_faults(mock_upstream, {"fault": "status=429;retry_after=1", "times": 1})
    started = time.perf_counter()
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=CHAT)
    completion = raw.parse()
    assert completion.choices[0].message.content and raw.headers["x-gateway-attempts"] == "2"
    first, second = mock_upstream.recorder.attempts
    assert first.status == 429 and second.outcome == "completed"
    assert second.time - first.time >= 0.99 and time.perf_counter() - started < 3.0


async def test_429_retry_after_120_passed_back_at_once(make_gateway: GatewayFactory,
                                                      mock_upstream: MockServer) -> None:
    """429 with Retry-After: 120 (over max_retry_after_s) goes back at once with its headers."""
    gw = await make_gateway(upstreams={"mock": upstream(mock_upstream.url)})
    started = time.perf_counter()
    async with sdk(gw, **{"x-mock-fault": "status=429;retry_after=120"}) as client:
        with pytest.raises(openai.RateLimitError) as exc:
            await client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert time.perf_counter() - started < 1.0
    assert exc.value.response.headers["retry-after"] == "120"
    assert exc.value.response.headers["x-gateway-attempts"] == "1"
    assert len(mock_upstream.recorder.attempts) == 1


async def test_connection_refused_retried_then_502_or_fallback(make_gateway: GatewayFactory,
                                                              mock_upstream: MockServer) -> None:
    """Connection refused is retried, then 502 + x-should-retry: false; with a fallback, it serves."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gw = await make_gateway(upstreams={"mock": upstream(dead)})
    status, headers, body, elapsed = await post_chat(gw)
    assert status == 502 and json.loads(body)["error"]["code"] == "connect_error"
    assert headers["x-gateway-attempts"] == "3" and headers["x-should-retry"] == "false" and elapsed < 1.0
    gw2 = await make_gateway(upstreams={"dead": upstream(dead), "mock": upstream(mock_upstream.url)},
                             routes=[{"match": {"model": "*"}, "upstream": "dead",
                                      "fallbacks": [{"upstream": "mock"}]}])
    status, headers, body, _ = await post_chat(gw2)
    assert status == 200 and headers["x-gateway-upstream"] == "mock" and headers["x-gateway-attempts"] == "4"
    assert len(mock_upstream.recorder.attempts) == 1


async def test_reset_before_headers_retried_on_chat(make_gateway: GatewayFactory,
                                                   mock_upstream: MockServer) -> None:
    """A reset before the response headers is retried; the client never sees it."""
    gw = await make_gateway(upstreams={"mock": upstream(mock_upstream.url)})
    await queue_faults(mock_upstream, {"fault": "reset_before_headers", "times": 1})
    async with sdk(gw) as client:
        completion = await client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert completion.choices[0].message.content
    assert outcomes(mock_upstream) == ["fault:reset_before_headers", "completed"]


@pytest.mark.parametrize("fault", ["stall_before_first_byte_ms=3000", "ttft_ms=3000"])
async def test_stall_before_first_token_per_attempt_timeout_then_504(
        make_gateway: GatewayFactory, mock_upstream: MockServer, fault: str) -> None:
    """No headers, or a role chunk then nothing, within first_byte_s: cut per attempt, retried, then 504."""
    gw = await make_gateway(upstreams={"mock": upstream(mock_upstream.url, timeouts={"first_byte_s": 0.2})})
    status, headers, body, elapsed = await post_chat(gw, stream=True, fault=fault)
    assert status == 504 and json.loads(body)["error"]["code"] == "timeout_before_first_byte"
    assert headers["x-should-retry"] == "false" and headers["x-gateway-attempts"] == "3"
    assert 0.6 <= elapsed < 2.5
    await mock_upstream.recorder.wait_for(lambda: all(o is not None for o in outcomes(mock_upstream)), 3.0)
    assert outcomes(mock_upstream) == ["client_disconnected"] * 3  # every abandoned attempt was closed


async def test_reset_mid_stream_error_event_no_done_one_attempt(make_gateway: GatewayFactory,
                                                               mock_upstream: MockServer) -> None:
    """A reset after the first tokens ends the stream with an error event, no [DONE], and is not retried."""
    gw = await make_gateway(upstreams={"mock": upstream(mock_upstream.url)})
    status, _, body, _ = await post_chat(gw, stream=True, fault="reset_after_chunks=3")
    events = events_of(body)
    assert status == 200 and "[DONE]" not in body.decode()
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "reset_mid_stream"
    assert len(mock_upstream.recorder.attempts) == 1
    async with sdk(gw, **{"x-mock-fault": "reset_after_chunks=3"}) as client:
        stream = await client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
        text = ""
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text and len(mock_upstream.recorder.attempts) == 2


async def test_stall_mid_stream_cut_at_idle_timeout(make_gateway: GatewayFactory,
                                                    mock_upstream: MockServer) -> None:
    """A stall after the first tokens is cut at idle_s with an error event, no [DONE], one attempt."""
    gw = await make_gateway(upstreams={"mock": upstream(mock_upstream.url, timeouts={"idle_s": 0.3})})
    status, _, body, elapsed = await post_chat(gw, stream=True, fault="stall_after_chunks=3;stall_ms=5000")
    events = events_of(body)
    assert status == 200 and "[DONE]" not in body.decode() and 0.3 <= elapsed < 2.0
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "idle_timeout"
    assert len(events) == 4 and len(mock_upstream.recorder.attempts) == 1
    # recorded once the partial answer's usage estimate has its encoding (loaded in a thread, first time only)
    await until(lambda: sample(gw, "gateway_timeouts_total", upstream="mock", phase="idle") > 0)
    assert sample(gw, "gateway_timeouts_total", upstream="mock", phase="idle") == 1


async def test_first_event_error_fails_over(make_gateway: GatewayFactory, mock_upstream: MockServer) -> None:
    """A stream whose first event is an error fails over before anything reaches the client."""
    gw = await make_gateway(
        upstreams={"mock": upstream(mock_upstream.url), "backup": upstream(mock_upstream.url)},
        routes=[{"match": {"model": "gpt-4o"}, "upstream": "mock",
                 "fallbacks": [{"upstream": "backup", "model": "gpt-4o-mini"}]}])
    await queue_faults(mock_upstream, {"fault": "error_event_first", "times": -1,
                                       "match": {"model": "gpt-4o"}})
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=CHAT,
                                                                     stream=True)
        text = ""
        async for chunk in raw.parse():
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text and raw.headers["x-gateway-upstream"] == "backup"
    assert [a.model for a in mock_upstream.recorder.attempts] == ["gpt-4o", "gpt-4o-mini"]
    assert sample(gw, "gateway_fallbacks_total", route="gpt-4o", **{"from": "mock", "to": "backup"}) == 1


async def test_slow_drip_within_idle_timeout_survives(make_gateway: GatewayFactory,
                                                     mock_upstream: MockServer) -> None:
    """Chunks arriving slower than usual but within idle_s make a complete stream, one attempt."""
    gw = await make_gateway(upstreams={"mock": upstream(mock_upstream.url, timeouts={"idle_s": 0.3,
                                                                                    "first_byte_s": 0.3})})
    status, _, body, elapsed = await post_chat(gw, stream=True, fault="drip_ms=60", max_tokens=5)
    assert status == 200 and events_of(body)[-1] == "data: [DONE]" and elapsed >= 0.3
    assert len(mock_upstream.recorder.attempts) == 1 and outcomes(mock_upstream) == ["completed"]


async def test_upstream_400_passed_through_untouched(make_gateway: GatewayFactory,
                                                    mock_upstream: MockServer) -> None:
    """A provider 400 reaches the client byte for byte, once, without x-should-retry."""
    gw = await make_gateway(upstreams={"mock": upstream(mock_upstream.url)})
    status, headers, body, _ = await post_chat(gw, fault="status=400")
    async with aiohttp.ClientSession() as session:
        async with session.post(mock_upstream.url + "/chat/completions",
                                headers={"x-mock-fault": "status=400"},
                                json={"model": "gpt-4o", "messages": CHAT}) as direct:
            assert body == await direct.read()
    assert status == 400 and "x-should-retry" not in headers and headers["x-gateway-attempts"] == "1"
    assert len(mock_upstream.recorder.attempts) == 2  # one through the gateway, one direct


async def test_fallback_chain_with_model_rewrite(make_gateway: GatewayFactory,
                                                 mock_upstream: MockServer) -> None:
    """Primary refused, first fallback 503s, second fallback (model rewritten) serves; the answer says who."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gw = await make_gateway(
        upstreams={"primary": upstream(dead), "backup": upstream(mock_upstream.url),
                   "backup2": upstream(mock_upstream.url)},
        routes=[{"match": {"model": "gpt-4o"}, "upstream": "primary",
                 "fallbacks": [{"upstream": "backup", "model": "gpt-4o-mini"},
                               {"upstream": "backup2", "model": "gpt-4.1-nano"}]}])
    await queue_faults(mock_upstream, {"fault": "status=503", "times": -1, "match": {"model": "gpt-4o-mini"}})
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=CHAT)
    assert raw.parse().model == "gpt-4.1-nano"
    assert raw.headers["x-gateway-upstream"] == "backup2" and raw.headers["x-gateway-attempts"] == "7"
    assert [a.model for a in mock_upstream.recorder.attempts] == ["gpt-4o-mini"] * 3 + ["gpt-4.1-nano"]
    assert sample(gw, "gateway_fallbacks_total", route="gpt-4o", **{"from": "primary", "to": "backup"}) == 1
    assert sample(gw, "gateway_fallbacks_total", route="gpt-4o", **{"from": "backup", "to": "backup2"}) == 1


PHASES = {
    "waiting_first_byte": ("stall_before_first_byte_ms=5000", False),
    "before_first_token": ("ttft_ms=5000", True),
    "mid_stream": ("stall_after_chunks=2;stall_ms=30000", True),
    "non_stream": ("ttft_ms=5000", False),
    "retry_backoff": ("status=503;retry_after=5", False),
}


@pytest.mark.parametrize("phase", list(PHASES))
async def test_client_disconnect_frees_the_upstream(make_gateway: GatewayFactory, mock_upstream: MockServer,
                                                   phase: str) -> None:
    """A client that leaves at any phase ends the gateway's work and the provider's request within 1 s."""
    gw = await make_gateway(upstreams={"mock": upstream(mock_upstream.url, retry={
        **FAST, "max_retry_after_s": 10})})
    fault, stream = PHASES[phase]
    finished: list[Exchange] = []
    gw.state.sinks.append(finished.append)
    session = aiohttp.ClientSession()
    task = asyncio.create_task(session.post(gw.base_url + "/chat/completions",
                                            headers={"x-mock-fault": fault},
                                            json={"model": "gpt-4o", "messages": CHAT, "stream": stream}))
    recorder = mock_upstream.recorder
    await recorder.wait_for(lambda: len(recorder.attempts) == 1, 5.0)
    resp = None
    if phase == "mid_stream":
        resp = await task
        await resp.content.readline()
    elif phase == "retry_backoff":
        await recorder.wait_for(lambda: recorder.attempts[0].outcome is not None, 5.0)
    elif phase == "before_first_token":
        # the role chunk is out: the gateway is peeking for the first token
        await until(lambda: recorder.attempts[0].events_sent >= 1, timeout=5.0, interval=0.005)
    if resp is not None:
        resp.close()
    task.cancel()
    await session.close()
    left_at = time.perf_counter()  # the client's connection is gone
    await recorder.wait_for(lambda: recorder.attempts[0].outcome is not None, 3.0)
    await until(lambda: not gw.state.lifecycle.active and finished, timeout=3.0,
                message="the request ended and was recorded")
    assert time.perf_counter() - left_at < 1.0
    expected = "fault:status" if phase == "retry_backoff" else "client_disconnected"
    assert outcomes(mock_upstream) == [expected] and finished[0].record.stream_outcome == "client_gone"
    breaker = gw.state.components[RESILIENCE].breakers["mock"]
    assert breaker.state == "closed" and not breaker.rejecting()


async def test_client_disconnect_while_queued_frees_its_place(make_gateway: GatewayFactory,
                                                             mock_upstream: MockServer) -> None:
    """A client that leaves while queued for the only upstream slot is gone within 1 s; slots stay usable."""
    one_slot = upstream(mock_upstream.url, rate_limit={"max_concurrency": 1})
    gw = await make_gateway(upstreams={"mock": one_slot})
    finished: list[Exchange] = []
    gw.state.sinks.append(finished.append)
    recorder = mock_upstream.recorder
    holder_session, queued_session = aiohttp.ClientSession(), aiohttp.ClientSession()
    holder = await holder_session.post(gw.base_url + "/chat/completions",
                                       headers={"x-mock-fault": "stall_after_chunks=2;stall_ms=30000"},
                                       json={"model": "gpt-4o", "messages": CHAT, "stream": True})
    await holder.content.readline()  # the only slot is taken
    queued = asyncio.create_task(queued_session.post(gw.base_url + "/chat/completions",
                                                     json={"model": "gpt-4o", "messages": CHAT}))
    await until(lambda: len(gw.state.lifecycle.active) >= 2, timeout=5.0, interval=0.005)
    left_at = time.perf_counter()
    queued.cancel()
    await queued_session.close()
    await until(lambda: bool(finished), timeout=3.0, interval=0.005)
    assert time.perf_counter() - left_at < 1.0 and finished[0].record.stream_outcome == "client_gone"
    assert len(recorder.attempts) == 1  # the queued request never reached the provider
    holder.close()
    await holder_session.close()
    await recorder.wait_for(lambda: recorder.attempts[0].outcome == "client_disconnected", 3.0)
    status, _, _, elapsed = await post_chat(gw)
    assert status == 200 and elapsed < 2.0  # both places were given back
