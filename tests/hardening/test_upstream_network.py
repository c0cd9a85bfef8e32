"""Network faults between the gateway and its provider, made by the fault proxy (not by the fake provider).

``tests/e2e/test_fault_matrix.py`` scripts faults inside the provider (statuses, stalls, resets it
chooses); here the TCP path misbehaves: messages split anywhere, latency, a thin pipe, a blackhole,
RSTs, a provider that never closes, a host that goes away and comes back. The client always gets a
complete answer, or a clean 502/504, or (once streaming) an explicit error event: never a hang and
never a truncated body that looks complete.
"""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from gateway.mock import MockServer
from tests.hardening.conftest import ProxyFactory
from tests.support.fault_proxy import FaultProxy
from tests.support.servers import InProcessGateway

CHAT = [{"role": "user", "content": "tell me about networks"}]


@pytest_asyncio.fixture(params=["aiohttp", "raw"])  # both upstream clients (pool.client, issue #21)
async def proxied(request: pytest.FixtureRequest, make_gateway: Any, mock_upstream: MockServer,
                  fault_proxy: ProxyFactory) -> tuple[InProcessGateway, FaultProxy]:
    proxy = await fault_proxy(mock_upstream.port)
    gw = await make_gateway(
        upstreams={"mock": {"base_url": proxy.url + "/v1", "api_key": "sk-up",
                            "pool": {"client": request.param},
                            "retry": {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02},
                            "timeouts": {"connect_s": 1, "first_byte_s": 1, "idle_s": 2, "total_s": 20}}},
        cache={"exact": {"enabled": False}, "coalesce": {"enabled": False}})
    return gw, proxy


async def stream_text(gw: InProcessGateway, **kw: Any) -> str:
    async with aiohttp.ClientSession() as s, s.post(gw.base_url + "/chat/completions", json={
            "model": "gpt-4o", "messages": CHAT, "stream": True, "max_tokens": 40, **kw}) as resp:
        assert resp.status == 200
        return (await resp.read()).decode()


async def complete(gw: InProcessGateway) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(gw.base_url + "/chat/completions", json={
            "model": "gpt-4o", "messages": CHAT, "max_tokens": 40}) as resp:
        return resp.status, await resp.json(content_type=None)


def content_of(sse: str) -> str:
    import orjson

    out = []
    for line in sse.splitlines():
        if line.startswith("data: {"):
            choices = orjson.loads(line[6:]).get("choices") or [{}]
            out.append(choices[0].get("delta", {}).get("content") or "")
    return "".join(out)


async def test_sliced_latent_and_thin_pipes_deliver_the_same_answer(
        proxied: tuple[InProcessGateway, FaultProxy]) -> None:
    """Split into 7-byte writes, +200 ms, or 20 KB/s: the client gets the same complete answer and [DONE]."""
    gw, proxy = proxied
    reference = await stream_text(gw)
    for faults in ({"slice_bytes": 7, "slice_gap_s": 0.001}, {"latency_s": 0.2}, {"bandwidth_bps": 20_000}):
        proxy.set(**faults)
        text = await stream_text(gw)
        proxy.clear()
        assert text.rstrip().endswith("data: [DONE]"), faults
        assert content_of(text) == content_of(reference) != "", faults
    proxy.set(slice_bytes=5)
    status, body = await complete(gw)
    assert status == 200 and body["choices"][0]["message"]["content"]


async def test_blackhole_times_out_cleanly_then_recovers(
    proxied: tuple[InProcessGateway, FaultProxy],
) -> None:
    """Nothing comes back: 504 timeout_before_first_byte after the configured 1 s (per attempt); lifted:
    200."""
    gw, proxy = proxied
    proxy.set(blackhole=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body = await complete(gw)
    assert status == 504 and body["error"]["code"] == "timeout_before_first_byte"
    assert 1.0 <= loop.time() - started < 5.0
    proxy.clear()
    assert (await complete(gw))[0] == 200


async def test_reset_mid_stream_ends_with_an_error_event(
    proxied: tuple[InProcessGateway, FaultProxy],
) -> None:
    """An RST after the stream started: an SSE error event and no [DONE] (never a clean-looking end)."""
    gw, proxy = proxied
    proxy.set(reset_after_bytes=1500)  # headers and a few events through, then RST
    text = await stream_text(gw)
    assert "[DONE]" not in text and '"error"' in text and "reset_mid_stream" in text


async def test_resets_and_a_dead_host_are_502_and_the_pool_recovers(
        proxied: tuple[InProcessGateway, FaultProxy]) -> None:
    """RST at connect and a host that is down: 502 (after the configured retry); back up: 200 at once."""
    gw, proxy = proxied
    assert (await complete(gw))[0] == 200  # a pooled connection exists
    proxy.set(reset_after_bytes=0)
    proxy.reset_all()
    status, body = await complete(gw)
    assert status == 502 and body["error"]["code"] in ("reset_before_response", "connect_error")
    proxy.clear()
    await proxy.down()
    status, body = await complete(gw)
    assert status == 502 and body["error"]["code"] == "connect_error"
    await proxy.up()
    assert (await complete(gw))[0] == 200
    async with AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as client:
        assert (await client.chat.completions.create(model="gpt-4o", messages=CHAT)).choices


async def test_a_provider_that_closes_slowly_does_not_hold_the_answer(
        proxied: tuple[InProcessGateway, FaultProxy]) -> None:
    """The answer is framed (length or chunked): a provider that delays its close by 3 s delays nothing."""
    gw, proxy = proxied
    proxy.set(slow_close_s=3.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await complete(gw))[0] == 200
    assert (await stream_text(gw)).rstrip().endswith("data: [DONE]")
    assert loop.time() - started < 2.0
