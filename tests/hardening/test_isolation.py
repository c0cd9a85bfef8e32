"""Tenant isolation of the caches, property-tested: tenant B is never served what tenant A stored.

Hypothesis draws a question and its paraphrases (with a fresh ticket number in every run, so every
example asks something new) and an order in which tenants A and B ask them. Whatever the order, the
first time a tenant asks is a miss that reaches the provider, exact and semantic caches alike; a tenant
repeating its own question is a hit (so the property is never vacuous). Run on the memory and the Redis
store.
"""
from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from gateway.mock import MockConfig, MockServer, start_mock
from tests.hardening.conftest import MODULE_LOOP
from tests.support.servers import InProcessGateway, RedisServer, gateway_config, start_gateway

KEYS = {"a": "sk-tenant-a", "b": "sk-tenant-b"}
GROUPS = [
    (
        "How do I undo the last git commit for ticket {n}?",
        "How can I undo my last git commit for ticket {n}?",
    ),
    ("Why is the sky blue, asks ticket {n}?", "Why does the sky look blue, asks ticket {n}?"),
    ("Give me a bread recipe for order {n}.", "Give me a recipe for bread for order {n}."),
    ("What is the capital of France, question {n}?", "Which city is the capital of France, question {n}?"),
]


@dataclass
class Tenants:
    gateway: InProcessGateway
    mock: MockServer
    clients: dict[str, AsyncOpenAI]


async def tenants_env(state: dict[str, Any] | None) -> AsyncIterator[Tenants]:
    mock = await start_mock(MockConfig())
    cfg = gateway_config(mock.url, cache={"semantic": {"enabled": True}},
                         auth={"mode": "keys", "keys": [{"key": k, "tenant": t} for t, k in KEYS.items()]},
                         **({"state": state} if state else {}))
    gw = await start_gateway(cfg)
    clients = {t: AsyncOpenAI(base_url=gw.base_url, api_key=k, max_retries=0) for t, k in KEYS.items()}
    try:
        yield Tenants(gw, mock, clients)
    finally:
        for c in clients.values():
            await c.close()
        await gw.close()
        await mock.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def memory_tenants() -> AsyncIterator[Tenants]:
    async for env in tenants_env(None):
        yield env


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def redis_tenants(redis_server: RedisServer) -> AsyncIterator[Tenants]:
    async for env in tenants_env({"backend": "redis", "redis_url": redis_server.url, "key_prefix": "iso:",
                                  "timeout_ms": 5000}):
        yield env


async def ask(env: Tenants, tenant: str, text: str) -> str:
    raw = await env.clients[tenant].chat.completions.with_raw_response.create(
        model="gpt-4o", temperature=0, messages=[{"role": "user", "content": text}])
    return raw.headers["x-gateway-cache"]


Scenario = tuple[int, list[tuple[str, int]]]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """(group, [(tenant, variant), ...]) with at least one tenant repeating its own first question."""
    steps = draw(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 1)), min_size=1, max_size=5))
    steps.append(steps[0])  # the first asker repeats itself: must be a hit
    return draw(st.integers(0, len(GROUPS) - 1)), steps


async def check_scenario(env: Tenants, group: int, steps: list[tuple[str, int]]) -> None:
    """Every run asks a question never asked before (a fresh ticket,
    also when Hypothesis replays an example)."""
    ticket = secrets.randbelow(10**9)
    asked: dict[str, set[int]] = {"a": set(), "b": set()}
    for i, (tenant, variant) in enumerate(steps):
        calls = env.mock.recorder.count("/v1/chat/completions")
        result = await ask(env, tenant, GROUPS[group][variant].format(n=ticket))
        if not asked[tenant]:
            # first ask of this tenant: never the other's entry
            assert result == "miss", (tenant, steps[:i + 1])
            assert env.mock.recorder.count("/v1/chat/completions") == calls + 1
        elif variant in asked[tenant]:
            assert result in ("hit", "semantic-hit"), (tenant, steps[:i + 1])  # its own repeat
        asked[tenant].add(variant)


SETTINGS: dict[str, Any] = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}


@MODULE_LOOP
@settings(max_examples=40, **SETTINGS)  # type: ignore[arg-type]
@given(scenario=scenarios())
async def test_tenants_never_share_cache_entries_memory(memory_tenants: Tenants, scenario: Scenario) -> None:
    """40 drawn orders of asks by A and B: no cross-tenant hit, exact or semantic (memory store)."""
    await check_scenario(memory_tenants, *scenario)


@MODULE_LOOP
@settings(max_examples=20, **SETTINGS)  # type: ignore[arg-type]
@given(scenario=scenarios())
async def test_tenants_never_share_cache_entries_redis(redis_tenants: Tenants, scenario: Scenario) -> None:
    """20 drawn orders: no cross-tenant hit with the answers stored in Redis."""
    await check_scenario(redis_tenants, *scenario)


@pytest.mark.slow
@MODULE_LOOP
@settings(max_examples=400, **SETTINGS)  # type: ignore[arg-type]
@given(scenario=scenarios())
async def test_tenants_never_share_cache_entries_long(memory_tenants: Tenants, scenario: Scenario) -> None:
    """400 drawn orders (slow): no cross-tenant hit."""
    await check_scenario(memory_tenants, *scenario)


@MODULE_LOOP
async def test_concurrent_identical_requests_of_two_tenants_are_not_coalesced(
    memory_tenants: Tenants,
) -> None:
    """A and B asking the same new question at the same instant each get their own provider call."""
    env = memory_tenants
    before = env.mock.recorder.count("/v1/chat/completions")
    text = f"Tell me something new about coalescing, request 77-{id(env)}"
    results = await asyncio.gather(*(ask(env, t, text) for t in "abab"))
    assert results.count("miss") >= 2
    assert env.mock.recorder.count("/v1/chat/completions") - before >= 2


@MODULE_LOOP
async def test_paraphrase_hits_for_its_tenant_only(memory_tenants: Tenants) -> None:
    """The drawn phrasings do hit the semantic cache within a tenant (the property is not vacuous),
    not across."""
    ticket = secrets.randbelow(10**9)
    for first, second in GROUPS:
        assert await ask(memory_tenants, "a", first.format(n=ticket)) == "miss"
        assert await ask(memory_tenants, "a", second.format(n=ticket)) == "semantic-hit"
        assert await ask(memory_tenants, "b", second.format(n=ticket)) == "miss"
