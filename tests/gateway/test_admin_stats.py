"""GET /admin/stats and /admin/stats/stream on the real server: auth, the summary, the per-second stream."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest_asyncio
from openai import AsyncOpenAI

from gateway.admin_auth import COOKIE, sessions_of
from gateway.mock import MockServer
from tests.support.servers import InProcessGateway, gateway_config, start_gateway

KEY = "adm-stats-key"
BEARER = {"authorization": f"Bearer {KEY}"}


@pytest_asyncio.fixture
async def gw(mock_upstream: MockServer) -> AsyncIterator[InProcessGateway]:
    gateway = await start_gateway(gateway_config(mock_upstream.url, admin={"api_key": KEY},
                                                 metrics={"models": ["gpt-4o"]}))
    try:
        yield gateway
    finally:
        await gateway.close()


async def chat(gw: InProcessGateway, n: int, **kw: Any) -> None:
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0) as client:
        for _ in range(n):
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], **kw
            )


async def read_event(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next ``data:`` event of an SSE response (a bounded read: the server sends one per second)."""
    buf = b""
    while True:
        line = await asyncio.wait_for(resp.content.readline(), 10)
        assert line, "stream ended"
        if line == b"\n" and buf:
            return orjson.loads(buf)  # type: ignore[no-any-return]
        if line.startswith(b"data: "):
            buf += line[6:].rstrip(b"\n")


async def test_stats_need_the_admin_key(gw: InProcessGateway) -> None:
    """Without the key (or with a wrong one) both endpoints answer 401 and reveal nothing."""
    async with aiohttp.ClientSession() as http:
        for path in ("/admin/stats", "/admin/stats/stream"):
            async with http.get(gw.url + path) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "invalid_api_key"
            async with http.get(gw.url + path, headers={"authorization": "Bearer nope"}) as resp:
                assert resp.status == 401


async def test_stats_are_off_without_an_admin_key(mock_upstream: MockServer) -> None:
    """With no ``admin.api_key`` configured the endpoints do not exist (404)."""
    gw = await start_gateway(gateway_config(mock_upstream.url))
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/admin/stats", "/admin/stats/stream"):
                async with http.get(gw.url + path, headers=BEARER) as resp:
                    assert resp.status == 404
    finally:
        await gw.close()


async def test_summary_counts_the_traffic(gw: InProcessGateway) -> None:
    """After 4 requests the summary shows 4, all successful, with latency, TTFT and tokens."""
    await chat(gw, 4)
    async with (
        aiohttp.ClientSession() as http,
        http.get(gw.url + "/admin/stats?series=1", headers=BEARER) as resp,
    ):
        assert resp.status == 200 and resp.headers["cache-control"] == "no-store"
        s = await resp.json()
    assert s["requests"]["total"] == 4 and s["requests"]["success_rate"] == 1.0
    assert s["latency_ms"]["p50"] > 0 and s["ttft_ms"]["p95"] > 0
    assert s["tokens"]["completion"] > 0 and s["models"][0]["model"] == "gpt-4o"
    assert {"cache", "compression", "resilience", "breakers", "rate_limit", "recent", "inflight"} <= set(s)
    assert len(s["recent"]) == 4 and "series" in s


async def test_stream_sends_history_then_one_event_per_second(gw: InProcessGateway) -> None:
    """The first event is full (rows of the window), the next ones carry only new seconds; a cookie works."""
    await chat(gw, 2)
    cookies = {COOKIE: await sessions_of(gw.state).create(gw.state, KEY)}
    async with (
        aiohttp.ClientSession(cookies=cookies) as http,
        http.get(gw.url + "/admin/stats/stream") as resp,
    ):
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
        first = await read_event(resp)
        assert first["full"] is True and first["summary"]["requests"]["total"] == 2
        await chat(gw, 1)
        # A tick may fall while that request runs (a loaded machine): its event still says 2. The request
        # shows in one of the next events; each of them carries only new seconds.
        later = [await read_event(resp)]
        while later[-1]["summary"]["requests"]["total"] == 2 and len(later) < 5:
            later.append(await read_event(resp))
        assert later[-1]["summary"]["requests"]["total"] == 3
        assert all(event["full"] is False for event in later)
        secs = [r["sec"] for event in (first, *later) for r in event["rows"]]
        assert secs == list(range(secs[0], secs[0] + len(secs))), "rows are contiguous, never repeated"


async def test_stream_ends_when_the_gateway_drains(gw: InProcessGateway) -> None:
    """An open dashboard never holds up shutdown: the stream ends once draining starts."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(gw.url + "/admin/stats/stream", headers=BEARER) as resp,
    ):
        await read_event(resp)
        gw.state.lifecycle.draining = True
        rest = await asyncio.wait_for(resp.content.read(), 10)
        assert rest.count(b"data: ") <= 1
