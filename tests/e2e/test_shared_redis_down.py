"""Redis goes away under two replicas: each keeps answering from its local state, and /admin/stats
(the dashboard's source) says its figures are now this worker's only; Redis back, the fleet again."""
from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio
from openai import AsyncOpenAI

from gateway.mock import MockServer
from tests.support.servers import (
    InProcessGateway,
    RedisServer,
    gateway_config,
    redis_server_binary,
    running_redis,
    start_gateway,
)
from tests.support.until import until

ADMIN = "adm-redis-down-e2e"


@pytest_asyncio.fixture
async def redis() -> AsyncIterator[RedisServer]:
    binary = redis_server_binary()
    assert binary is not None
    with running_redis(binary) as server:
        yield server


async def stats(gw: InProcessGateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            gw.url + "/admin/stats", headers={"authorization": f"Bearer {ADMIN}"}) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def answered(gw: InProcessGateway) -> bool:
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0) as client:
        reply = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"down {secrets.token_hex(3)}"}])
    return bool(reply.choices[0].message.content)


async def test_redis_away_each_replica_goes_local_and_says_so(mock_upstream: MockServer,
                                                             redis: RedisServer) -> None:
    state = {"backend": "redis", "redis_url": redis.url, "key_prefix": "down:", "timeout_ms": 200}
    cfg = gateway_config(mock_upstream.url, state=state, admin={"api_key": ADMIN})
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    try:
        assert await answered(a) and await answered(b)
        await stats(b)  # B publishes its windows as it answers
        up = await stats(a)
        assert up["scope"] == "fleet" and up["shared"] == {"local_only": False, "banner": None}
        assert up["requests"]["total"] == 2 and len(up["replicas"]) == 2  # control: the fleet's figures
        redis.kill()
        assert await answered(a) and await answered(b)  # served from local state, no error

        async def local() -> bool:
            return (await stats(a))["shared"]["local_only"] is True

        await until(local, timeout=10, interval=0.05, message="A falls back to its own figures")
        down = await stats(a)
        assert down["scope"] == "worker" and down["scopes"]["requests"] == "worker"
        assert "Redis is unreachable" in down["shared"]["banner"] and down["replicas"] == []
        assert down["requests"]["total"] == 2  # A's own requests only
        redis.start()

        async def fleet_again() -> bool:
            return (await stats(a))["shared"]["local_only"] is False

        await until(fleet_again, timeout=15, interval=0.1, message="A sees the fleet again")
    finally:
        await a.close()
        await b.close()
