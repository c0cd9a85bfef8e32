"""Coalescing across processes on a real Redis: a follower answers from the leader's entry; when the
leader's answer is not stored, it gives up within the grace and calls the provider itself."""
from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

from gateway.body import OneChunk
from gateway.config_model import StateConfig
from gateway.exchange import Exchange, UpstreamResponse
from gateway.state.redis_client import GuardedRedis
from policies.cache.entry import CachedAnswer
from policies.cache.fleet_flight import FleetFlight
from policies.cache.keys import CacheKey
from policies.cache.memory_store import MemoryStore
from policies.cache.redis_store import AnswerStore
from tests.support.servers import RedisServer
from tests.support.until import until

ANSWER = b'{"id":"x","object":"chat.completion","choices":[]}'


def process(url: str, prefix: str, decisions: list[str]) -> FleetFlight:
    redis = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=url, timeout_ms=1000),
                                     time.monotonic)
    store = AnswerStore("exact", MemoryStore(100, 10**6, time.monotonic), redis, prefix)
    return FleetFlight(redis, store, time.monotonic, decisions.append, poll_s=0.005)


class Provider:
    """A next() that counts calls and answers when ``release`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        self.calls += 1
        await self.release.wait()
        return UpstreamResponse(status=200, headers={"content-type": "application/json"},
                                body=OneChunk(ANSWER))


async def drain(resp: UpstreamResponse) -> bytes:
    return b"".join([chunk async for chunk in resp.body])


async def test_follower_answers_from_the_leaders_entry(redis_server: RedisServer,
                                                       make_exchange: Callable[..., Exchange]) -> None:
    prefix, key, decisions = f"f{secrets.token_hex(3)}:", CacheKey("t:team-a", "d1"), list[str]()
    a, b = process(redis_server.url, prefix, decisions), process(redis_server.url, prefix, decisions)
    pa, pb = Provider(), Provider()
    leader = asyncio.create_task(a.call(make_exchange(), pa, key, 5.0))
    await until(lambda: decisions == ["fleet_leader"])  # the leader's claim goes first
    ex_b = make_exchange()
    follower = asyncio.create_task(b.call(ex_b, pb, key, 5.0))
    pa.release.set()
    assert await drain(await leader) == ANSWER
    a.store.set(key, CachedAnswer(operation="chat", body=ANSWER, created=time.time()), 30)  # the exact cache
    resp = await follower
    assert await drain(resp) == ANSWER and ex_b.record.cache_result == "coalesced"
    assert (pa.calls, pb.calls) == (1, 0) and decisions == ["fleet_leader", "fleet_follower"]


async def test_follower_gives_up_when_nothing_is_stored(redis_server: RedisServer,
                                                        make_exchange: Callable[..., Exchange]) -> None:
    prefix, key, decisions = f"f{secrets.token_hex(3)}:", CacheKey("t:team-a", "d2"), list[str]()
    a, b = process(redis_server.url, prefix, decisions), process(redis_server.url, prefix, decisions)
    pa, pb = Provider(), Provider()
    pa.release.set()
    pb.release.set()
    resp = await a.call(make_exchange(), pa, key, 5.0)
    await drain(resp)  # the leader's answer ends; nothing is stored (say, cut by max_tokens)
    started = time.monotonic()
    await drain(await b.call(make_exchange(), pb, key, 5.0))
    assert pb.calls == 1 and decisions == ["fleet_leader", "fleet_gave_up"]
    assert time.monotonic() - started < 3.0  # within the grace, not the whole wait
