"""Admission control end to end (memory backend):
the openai SDK through the real gateway to the fake provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from gateway.auth import digest
from gateway.mock import MockConfig, MockServer, start_mock
from gateway.mock.chat import chat_prompt_tokens
from gateway.mock.recorder import QUOTA_429
from policies.ratelimit.buckets import LimiterClock
from policies.ratelimit.model import LimitSet
from policies.ratelimit.runtime import COMPONENT, RateLimiter
from tests.support.servers import InProcessGateway, gateway_config, start_gateway

KEY = "sk-team-a-secret"
NO_CACHE = {"exact": {"enabled": False}, "coalesce": {"enabled": False}}


def limiter(gw: InProcessGateway) -> RateLimiter:
    return gw.state.components[COMPONENT]


def limit_set(gw: InProcessGateway, policy: str, key_hash: str | None = None) -> LimitSet:
    layer = next(p for p in gw.state.runtime.policies if p.name == policy)
    return layer.sets["mock"][0] if key_hash is None else layer._sets[key_hash]


async def levels(gw: InProcessGateway, ls: LimitSet) -> tuple[float, ...]:
    """What the limits have left now (a zero-amount acquire takes nothing)."""
    verdict = await limiter(gw).acquire(ls, tuple(0 for _ in ls.limits), "peek")
    return verdict.levels


def sample(gw: InProcessGateway, name: str, **labels: str) -> float:
    return gw.state.metrics.registry.get_sample_value(name, labels) or 0.0


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"request number {i}: tell me about sidecars"}]


async def post_json(url: str, payload: Any) -> None:
    """POST to a mock control endpoint."""
    async with aiohttp.ClientSession() as s, s.post(url, json=payload) as r:
        assert r.status == 200, await r.text()


class Frozen:
    """A limiter clock that does not move: bucket arithmetic in tests becomes exact."""

    def __call__(self) -> float:
        return 1000.0


async def max_tokens_storm(
    gw: InProcessGateway, mock: MockServer, n: int, tpm: int, refill_per_s: float
) -> None:
    """n concurrent streamed requests; checks what was in flight at the provider and the settled bucket.

    A token bucket's promise: what is reserved at once never exceeds the limit plus what refilled
    meanwhile (``refill_per_s`` x elapsed; 0 on a frozen clock).
    """
    started = asyncio.get_running_loop().time()
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0) as client:
        in_flight_peak = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal in_flight_peak
            while not done.is_set():
                in_flight_peak = max(
                    in_flight_peak, sum(1 for a in mock.recorder.attempts if a.outcome is None)
                )
                await asyncio.sleep(0.002)

        async def one(i: int) -> int:
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=messages(i), max_tokens=400, stream=True,
                extra_headers={"x-mock-tokens": "20"})
            async for _ in stream:
                pass
            return i

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        done.set()
        await watcher
    assert all(isinstance(r, int) for r in results), results
    reservation = (
        gw.state.tokenizer.count_request("chat", {"model": "gpt-4o", "messages": messages(10)}) + 400
    )
    refilled = refill_per_s * (asyncio.get_running_loop().time() - started)
    assert in_flight_peak * reservation <= tpm + refilled  # never reserved beyond the limit
    assert in_flight_peak >= tpm // reservation - 2  # and the limit was used, not starved
    await limiter(gw).drain()
    used = sum(chat_prompt_tokens(a.json) + 20 for a in mock.recorder.attempts)  # what the provider reported
    ls = limit_set(gw, "rate_limit_upstream")
    left = (await levels(gw, ls))[0]
    expected = min(tpm, tpm - used + refill_per_s * (asyncio.get_running_loop().time() - started))
    assert abs(left - expected) <= reservation  # reservations settled to real usage, within one request's max


@pytest_asyncio.fixture
async def slow_mock() -> AsyncIterator[MockServer]:
    """A provider that keeps answers in flight for a while (first token after 150 ms)."""
    server = await start_mock(MockConfig(ttft_ms=150))
    try:
        yield server
    finally:
        await server.close()


async def test_50_concurrent_never_reserve_beyond_10k_tpm(slow_mock: MockServer) -> None:
    """50 concurrent requests against a 10k-TPM limit: never more reserved in flight than the limit."""
    gw = await start_gateway(gateway_config(slow_mock.url, cache=NO_CACHE, upstreams={"mock": {
        "base_url": slow_mock.url, "api_key": "sk-up",
        "rate_limit": {"tpm": 10_000, "headroom": 1.0, "max_queue_wait_s": 20}}}))
    try:
        limiter(gw).set_clock(LimiterClock(now=Frozen()))
        await max_tokens_storm(gw, slow_mock, 50, 10_000, refill_per_s=0.0)
        assert sample(gw, "gateway_rate_limit_decisions_total", scope="upstream", limit="tpm",
                      decision="queued") > 0
    finally:
        await gw.close()


async def test_burst_of_3x_rpm_queues_and_provider_never_429s() -> None:
    """3x the upstream RPM at once: every request succeeds, and the provider's own quota is never exceeded.

    The provider enforces a 60 s sliding window, stricter than our continuous bucket: the gateway stays
    under it by learning from the provider's x-ratelimit-* headers (shrink, then pause until the reset).
    Limiter and provider run on a clock 40x faster than real time (a minute in 1.5 real seconds), which
    also makes every real millisecond of latency count 40x: until the first answer's headers arrive,
    the bucket refills unchecked, and headroom 0.6 leaves it ~1 real s for that on a loaded test
    machine (at 0.7 ~640 ms, which a CI run under coverage once overran: the 21st request got the
    provider's 429; at 0.9 ~170 ms; in real time, 6.7 s).
    """
    speed = 40.0
    mock = await start_mock(MockConfig(), clock=lambda: time.monotonic() * speed)
    gw = await start_gateway(gateway_config(mock.url, cache=NO_CACHE, upstreams={"mock": {
        "base_url": mock.url, "api_key": "sk-up", "retry": {"max_attempts": 1},
        "rate_limit": {"rpm": 20, "headroom": 0.6, "max_queue_wait_s": 15}}}))
    try:
        limiter(gw).set_clock(LimiterClock(now=lambda: time.monotonic() * speed, speed=speed))
        await post_json(mock.base_url + "/_mock/quota", {"rpm": 20})
        async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0) as client:
            answers = await asyncio.gather(
                *(
                    client.chat.completions.create(model="gpt-4o", messages=messages(i), max_tokens=5)
                    for i in range(60)
                ),
                return_exceptions=True,
            )
        statuses = [getattr(a, "status_code", 200) for a in answers]
        assert statuses == [200] * 60, [a for a in answers if isinstance(a, Exception)][:3]
        outcomes = [a.outcome for a in mock.recorder.attempts]
        assert QUOTA_429 not in outcomes and len(outcomes) == 60
        assert sample(gw, "gateway_rate_limit_decisions_total", scope="upstream", limit="rpm",
                      decision="queued") > 0
    finally:
        await gw.close()
        await mock.close()


def keys_config(mock: MockServer, **key: Any) -> dict[str, Any]:
    return gateway_config(mock.url, cache=NO_CACHE,
                          auth={"mode": "keys", "keys": [{"key": KEY, "tenant": "team-a", **key}]})


async def test_client_over_its_limit_gets_429_with_headers(mock_upstream: MockServer) -> None:
    """A key over its rpm gets 429 at once with Retry-After and OpenAI's x-ratelimit-* headers."""
    gw = await start_gateway(keys_config(mock_upstream, rpm=2, tpm=50_000))
    try:
        async with AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as client:
            for i in range(2):
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=messages(i)
                )
                assert raw.headers["x-ratelimit-limit-requests"] == "2"
                assert raw.headers["x-ratelimit-remaining-requests"] == str(1 - i)
                assert raw.headers["x-ratelimit-limit-tokens"] == "50000"
            with pytest.raises(openai.RateLimitError) as info:
                await client.chat.completions.create(model="gpt-4o", messages=messages(3))
        headers = info.value.response.headers
        assert 29 <= int(headers["retry-after"]) <= 30
        assert (
            headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
        )
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert headers["x-ratelimit-limit-tokens"] == "50000"
        assert 0 < int(headers["x-ratelimit-remaining-tokens"]) < 50000
        assert headers["x-ratelimit-reset-tokens"].endswith("s")
        assert info.value.code == "rate_limit_exceeded"
        assert len(mock_upstream.recorder.attempts) == 2
    finally:
        await gw.close()


async def test_shadow_mode_counts_without_blocking(mock_upstream: MockServer) -> None:
    """enforce: false lets every request through and counts the would-be rejections."""
    gw = await start_gateway(gateway_config(mock_upstream.url, cache=NO_CACHE, upstreams={"mock": {
        "base_url": mock_upstream.url, "api_key": "sk-up", "rate_limit": {"rpm": 2, "headroom": 1.0,
                                                                            "enforce": False}}}))
    try:
        async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0) as client:
            for i in range(6):
                await client.chat.completions.create(model="gpt-4o", messages=messages(i))
        assert len(mock_upstream.recorder.attempts) == 6
        assert sample(gw, "gateway_rate_limit_decisions_total", scope="upstream", limit="rpm",
                      decision="shadow_rejected") == 4
        assert sample(gw, "gateway_policy_decisions_total", policy="rate_limit_upstream",
                      decision="shadow_rejected") == 4
    finally:
        await gw.close()


async def test_streamed_answer_reconciles_with_real_usage(mock_upstream: MockServer) -> None:
    """After a stream ends, client and upstream buckets hold exactly the provider's reported usage."""
    cfg = keys_config(mock_upstream, tpm=100_000)
    cfg["upstreams"] = {"mock": {"base_url": mock_upstream.url, "api_key": "sk-up",
                                 "rate_limit": {"tpm": 100_000, "headroom": 1.0}}}
    gw = await start_gateway(cfg)
    try:
        limiter(gw).set_clock(LimiterClock(now=Frozen()))
        async with AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=messages(1),
                max_tokens=300,
                stream=True,
                extra_headers={"x-mock-tokens": "7"},
            )
            chunks = [c async for c in stream]
        assert all(c.usage is None for c in chunks)  # the client did not ask for usage: hidden from it
        attempt = mock_upstream.recorder.attempts[0]
        assert attempt.json["stream_options"] == {"include_usage": True}
        await limiter(gw).drain()
        used = chat_prompt_tokens(attempt.json) + 7  # the usage the provider reported
        reserved = sample(gw, "gateway_tokens_reserved_total")
        assert reserved > 300
        assert sample(gw, "gateway_tokens_reconciled_total", direction="refund") == reserved - used
        upstream_left = (await levels(gw, limit_set(gw, "rate_limit_upstream")))[0]
        client_left = (await levels(gw, limit_set(gw, "rate_limit_client", digest(KEY))))[0]
        assert upstream_left == client_left == 100_000 - used
    finally:
        await gw.close()
