"""The usage ledger end to end: survives a restart (SQLite), shared by two gateway processes (Redis)."""
from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from openai import AsyncOpenAI

from gateway.mock import MockServer
from tests.support.servers import InProcessGateway, RedisServer, gateway_config, spawn_gateway, wait_ready

GatewayFactory = Callable[..., Awaitable[InProcessGateway]]
ADMIN = {"authorization": "Bearer adm"}
CHAT = [{"role": "user", "content": "ledger me"}]


async def usage(url: str, group_by: str = "tenant", **params: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(url + "/admin/usage", params={"group_by": group_by, **params}, headers=ADMIN) as r,
    ):
        assert r.status == 200, await r.text()
        return {g["key"]: g for g in (await r.json())["groups"]}


async def chat(base_url: str, n: int, tokens: int = 5, **extra: Any) -> int:
    """Send ``n`` chats; returns the completion tokens the provider reported."""
    total = 0
    async with AsyncOpenAI(base_url=base_url, api_key="sk-c", max_retries=0) as client:
        for _ in range(n):
            r = await client.chat.completions.create(model="gpt-4o", messages=CHAT,
                                                     extra_headers={"x-mock-tokens": str(tokens)}, **extra)
            total += r.usage.completion_tokens if r.usage else 0
    return total


async def test_sqlite_ledger_survives_a_restart(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    """Records written before a graceful stop are all there after a restart, and new ones add up."""
    cfg = {
        "ledger": {"enabled": True, "sqlite_path": str(tmp_path / "usage.sqlite3"), "flush_interval_s": 60},
        "admin": {"api_key": "adm"},
        "pricing": {"gpt-4o": {"input": 1.0, "output": 2.0}},
    }
    first = await make_gateway(**cfg)
    completion = await chat(first.base_url, 4, tokens=5)
    await first.close()  # nothing was flushed yet (60 s interval): the closer must write it all
    second = await make_gateway(**cfg)
    before = (await usage(second.url, "model"))["gpt-4o"]
    assert before["requests"] == 4 and before["completion_tokens"] == completion == 20
    assert before["cost_usd"] > 0 and before["latency_p95_s"] is not None and before["ttft_p50_s"] is not None
    await chat(second.base_url, 2, tokens=3)
    after = await usage(second.url, "route")
    assert after["*"]["requests"] == 6 and after["*"]["completion_tokens"] == 26
    assert await usage(second.url, "model", since="4102444800") == {}  # 2100-01-01: nothing yet
    assert (await usage(second.url, "upstream", until="2000-01-01T00:00:00Z")) == {}


async def test_redis_ledger_is_shared_by_two_gateway_processes(mock_upstream: MockServer,
                                                               redis_server: RedisServer) -> None:
    """Two real gateway processes on one Redis: either one reports the traffic of both."""
    prefix = f"gw{uuid.uuid4().hex[:6]}:"
    cfg = gateway_config(mock_upstream.url, state={"backend": "redis", "redis_url": redis_server.url,
                                                   "key_prefix": prefix, "timeout_ms": 500},
                         ledger={"enabled": True, "flush_interval_s": 60}, admin={"api_key": "adm"})
    a, b = spawn_gateway(cfg), spawn_gateway(cfg)
    try:
        await wait_ready(a.url)
        await wait_ready(b.url)
        await chat(a.url + "/v1", 3, tokens=4)
        await chat(b.url + "/v1", 5, tokens=2)
        assert b.stop() == 0  # graceful stop: b's queued records are written before it exits
        totals = (await usage(a.url))["default"]
        assert totals["requests"] == 8 and totals["completion_tokens"] == 3 * 4 + 5 * 2
    finally:
        a.stop()
        b.stop()
