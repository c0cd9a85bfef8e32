"""The cache shared through a real Redis: across gateway processes, compressed, with TTLs, and fail-open."""
from __future__ import annotations

import secrets
import time
from typing import Any

import redis.asyncio as aioredis
from openai import AsyncOpenAI

from gateway.mock import MockServer
from policies.cache.runtime import COMPONENT as CACHE
from tests.support.servers import RedisServer, gateway_config, spawn_gateway, wait_ready
from tests.support.until import until

MSGS = [{"role": "user", "content": "what is in the ledger"}]


def redis_state(redis_server: RedisServer) -> dict[str, Any]:
    return {"backend": "redis", "redis_url": redis_server.url, "key_prefix": f"t{secrets.token_hex(4)}:"}


async def ask(base_url: str, content: str = "what is in the ledger") -> str:
    async with AsyncOpenAI(base_url=base_url, api_key="sk-shared", max_retries=0) as client:
        resp = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": content}], temperature=0)
        return resp.headers["x-gateway-cache"]


async def test_two_gateway_processes_share_entries(mock_upstream: MockServer,
                                                   redis_server: RedisServer) -> None:
    """An answer cached by one `gateway serve` process is a hit in another; the Redis entry is in the
    store's format (a small answer as it is: compressing it would cost more than it saves) and expires."""
    state = redis_state(redis_server)
    procs = [spawn_gateway(gateway_config(mock_upstream.url, state=state)) for _ in range(2)]
    try:
        for p in procs:
            await wait_ready(p.url)
        assert await ask(procs[0].url + "/v1") == "miss"
        client = aioredis.from_url(redis_server.url)
        try:
            async def written() -> bool:  # the Redis write is a background task
                return bool(await client.keys(state["key_prefix"] + "cache:exact:*"))

            await until(written, timeout=10, message="the cache entry reached Redis")
            (key,) = await client.keys(state["key_prefix"] + "cache:exact:*")
            assert (await client.get(key)).startswith(b"GWC0")  # GWC1 (zlib) from 4 KiB: test_entry.py
            assert 0 < await client.ttl(key) <= 3600
        finally:
            await client.aclose()
        assert await ask(procs[1].url + "/v1") == "hit"
        assert mock_upstream.recorder.count() == 1
    finally:
        for p in procs:
            p.stop()


async def test_redis_killed_means_misses_not_errors(make_gateway: Any, mock_upstream: MockServer,
                                                    redis_server: RedisServer) -> None:
    """With Redis gone every request still succeeds quickly: misses (or memory hits), never errors."""
    gw = await make_gateway(state=redis_state(redis_server))
    assert await ask(gw.base_url) == "miss"
    await gw.state.components[CACHE].exact.flush()
    redis_server.kill()
    try:
        started = time.monotonic()
        assert await ask(gw.base_url) == "hit"  # the in-memory tier still answers
        for i in range(5):
            assert await ask(gw.base_url, f"new question {i}") == "miss"
        assert await ask(gw.base_url, "new question 0") == "hit"
        assert time.monotonic() - started < 5
        errors = gw.state.metrics.registry.get_sample_value("gateway_cache_redis_errors_total")
        assert errors and errors > 0
    finally:
        redis_server.start()


async def test_a_stream_stored_raw_by_one_process_is_a_hit_in_both_modes_in_another(
        mock_upstream: MockServer, redis_server: RedisServer) -> None:
    """A streamed miss is written as it came (``GWC2``/``GWC3``: no assembly at the miss); the other
    process assembles it on its first hit: the same message as JSON and as a stream (openai SDK)."""
    state = redis_state(redis_server)
    procs = [spawn_gateway(gateway_config(mock_upstream.url, state=state)) for _ in range(2)]
    content = "a stream shared raw"
    try:
        for p in procs:
            await wait_ready(p.url)
        async with AsyncOpenAI(base_url=procs[0].url + "/v1", api_key="sk-shared", max_retries=0) as first:
            stream = await first.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": content}], temperature=0, stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        client = aioredis.from_url(redis_server.url)
        try:
            async def written() -> bool:
                return bool(await client.keys(state["key_prefix"] + "cache:exact:*"))

            await until(written, timeout=10, message="the raw entry reached Redis")
            (key,) = await client.keys(state["key_prefix"] + "cache:exact:*")
            assert (await client.get(key))[:4] in (b"GWC2", b"GWC3")  # the stream as is / compressed
        finally:
            await client.aclose()
        async with AsyncOpenAI(base_url=procs[1].url + "/v1", api_key="sk-shared", max_retries=0) as other:
            resp = await other.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": content}], temperature=0)
            assert resp.headers["x-gateway-cache"] == "hit"
            assert resp.parse().choices[0].message.content == streamed and streamed
            again = await other.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": content}], temperature=0, stream=True,
                stream_options={"include_usage": True})
            chunks = [c async for c in again]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == streamed
            assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
        assert mock_upstream.recorder.count() == 1
    finally:
        for p in procs:
            p.stop()
