"""A semantic-cache entry stored through replica A is a hit through replica B, and never for another
tenant (two gateways sharing a real Redis 8: vector sets)."""
from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest_asyncio
from openai import AsyncOpenAI

from gateway.mock import MockServer
from policies.cache.runtime import COMPONENT
from policies.cache.shared_vectors import SharedVectors
from tests.support.servers import InProcessGateway, RedisServer, gateway_config, start_gateway

KEYS = {"a": "sk-sem-tenant-a", "b": "sk-sem-tenant-b"}


@pytest_asyncio.fixture
async def replicas(mock_upstream: MockServer,
                   redis8_server: RedisServer) -> AsyncIterator[tuple[InProcessGateway, InProcessGateway]]:
    state = {"backend": "redis", "redis_url": redis8_server.url, "key_prefix": f"s{secrets.token_hex(3)}:",
             "timeout_ms": 5000}
    cfg = gateway_config(mock_upstream.url, state=state, cache={"semantic": {"enabled": True}},
                         auth={"mode": "keys", "keys": [{"key": k, "tenant": t} for t, k in KEYS.items()]})
    first = await start_gateway(cfg)
    second = await start_gateway(cfg)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


def shared_index(gw: InProcessGateway) -> SharedVectors:
    rt = gw.state.components.get(COMPONENT)
    assert rt is not None and rt.semantic is not None
    shared = rt.semantic.shared
    assert shared is not None
    return shared


async def ask(gw: InProcessGateway, tenant: str, text: str) -> str:
    async with AsyncOpenAI(base_url=gw.base_url, api_key=KEYS[tenant], max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", temperature=0, messages=[{"role": "user", "content": text}])
    return raw.headers["x-gateway-cache"]


async def test_paraphrase_hits_through_the_other_replica_for_its_tenant_only(
        replicas: tuple[InProcessGateway, InProcessGateway], mock_upstream: MockServer) -> None:
    a, b = replicas
    ticket = secrets.randbelow(10**9)
    assert await ask(a, "a", f"How do I undo the last git commit for ticket {ticket}?") == "miss"
    await shared_index(a).flush()  # the shared index is written in the background
    calls = mock_upstream.recorder.count("/v1/chat/completions")
    paraphrase = f"How can I undo my last git commit for ticket {ticket}?"
    assert await ask(b, "b", paraphrase) == "miss"  # another tenant: never A's entry
    assert await ask(b, "a", paraphrase) == "semantic-hit"  # positive control: same tenant, other replica
    assert mock_upstream.recorder.count("/v1/chat/completions") == calls + 1  # only tenant B's miss
