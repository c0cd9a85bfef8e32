"""The shared store on a real Redis: shared between stores, TTL on every key, Redis down is a miss."""
from __future__ import annotations

import asyncio
import secrets
import time

from gateway.config_model import StateConfig
from gateway.state.redis_client import GuardedRedis
from gateway.state.write_behind import Write
from policies.cache.entry import CachedAnswer
from policies.cache.keys import CacheKey
from policies.cache.memory_store import MemoryStore
from policies.cache.redis_store import ENTRY_MAGIC, MAX_TOKENS, AnswerStore
from tests.support.servers import RedisServer


def store(redis: GuardedRedis, prefix: str) -> AnswerStore:
    return AnswerStore("exact", MemoryStore(100, 10**6, time.monotonic), redis, prefix)


async def raw(redis: GuardedRedis, key: str) -> bytes:
    value = await redis.client.get(key)
    assert isinstance(value, bytes)
    return value


async def test_shared_and_expiring(redis_server: RedisServer) -> None:
    """An entry written by one store is read by another through Redis, with a TTL."""
    redis = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=redis_server.url), time.monotonic)
    prefix = f"u{secrets.token_hex(3)}:"
    try:
        a, b = store(redis, prefix), store(redis, prefix)
        key = CacheKey("t:x", "d1")
        a.set(key, CachedAnswer(operation="chat", body=b'{"choices":[]}', created=1.0), 30)
        await a.flush()
        got = await b.get(key)
        assert got is not None and got.body == b'{"choices":[]}'
        assert 0 < await redis.client.ttl(a.redis_key(key)) <= 30
        assert (await b.get_many([key, CacheKey("t:x", "none")]))[1] is None
    finally:
        await redis.close()


async def test_redis_down_is_a_quick_miss() -> None:
    """With nothing listening every call is a miss within the timeout, never an exception."""
    redis = GuardedRedis.from_config(
        StateConfig(backend="redis", redis_url="redis://127.0.0.1:1/0", timeout_ms=50), time.monotonic
    )
    errors: list[int] = []
    s = AnswerStore(
        "exact", MemoryStore(10, 10**6, time.monotonic), redis, "x:", on_redis_error=lambda: errors.append(1)
    )
    try:
        started = time.monotonic()
        for i in range(5):
            assert await s.get(CacheKey("t:x", str(i))) is None
        s.set(CacheKey("t:x", "w"), CachedAnswer(operation="chat", body=b"{}", created=0.0), 10)
        await asyncio.wait_for(s.flush(), 2)
        assert time.monotonic() - started < 2 and errors
        assert await s.get(CacheKey("t:x", "w")) is not None  # memory still serves
        assert await s.get_or_claim(CacheKey("t:x", "c"), "p1", 1000) == (None, None)  # no claim, no error
    finally:
        await redis.close()


async def test_get_or_claim_takes_the_claim_only_on_a_miss(redis_server: RedisServer) -> None:
    """One round trip: a miss claims (at the entry's key, with the claim's life), a second claimer sees the
    holder, a hit in Redis or in memory claims nothing (the entry stays as it was)."""
    redis = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=redis_server.url), time.monotonic)
    prefix = f"c{secrets.token_hex(3)}:"
    try:
        a, b = store(redis, prefix), store(redis, prefix)
        miss = CacheKey("t:x", "miss")
        answer, claim = await a.get_or_claim(miss, "p1", 5000)
        assert answer is None and claim is not None and claim.won and claim.key == a.claim_key(miss)
        assert await redis.client.get(claim.key) == b"p1" and 0 < await redis.client.pttl(claim.key) <= 5000
        answer, held = await b.get_or_claim(miss, "p2", 5000)
        assert answer is None and held is not None and not held.won and held.holder == b"p1"
        assert await redis.client.get(claim.key) == b"p1"  # NX: the first claim stands

        hit = CacheKey("t:x", "hit")
        a.set(hit, CachedAnswer(operation="chat", body=b'{"choices":[]}', created=1.0), 30)
        await a.flush()
        answer, none = await b.get_or_claim(hit, "p2", 5000)  # from Redis: kept in b's memory after
        assert answer is not None and answer.body == b'{"choices":[]}' and none is None
        assert (await raw(redis, b.claim_key(hit))).startswith(ENTRY_MAGIC)  # the entry, unclaimed
        await redis.client.delete(b.redis_key(hit))
        answer, none = await b.get_or_claim(hit, "p2", 5000)  # from memory: Redis is not asked
        assert answer is not None and none is None and await redis.client.exists(b.claim_key(hit)) == 0
    finally:
        await redis.close()


async def test_an_entry_encoded_ahead_is_sent_as_is_and_not_kept(redis_server: RedisServer) -> None:
    redis = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=redis_server.url), time.monotonic)
    prefix = f"e{secrets.token_hex(3)}:"
    try:
        s = store(redis, prefix)
        answer = CachedAnswer(operation="chat", body=b'{"choices":[]}', created=1.0)
        ahead = answer.encoded = b"GWC0-encoded-ahead"  # what the fill's thread did (a marker here)
        s.set(CacheKey("t:x", "ahead"), answer, 30)
        assert answer.encoded is None  # the memory entry does not keep a second copy
        await s.flush()
        assert await redis.client.get(s.redis_key(CacheKey("t:x", "ahead"))) == ahead
    finally:
        await redis.close()


def test_key_tokens_stay_per_namespace_secret_free_and_bounded() -> None:
    """The remembered namespace tokens: two tenants never share a key, a client key's namespace is hashed
    (no secret in a key name), the same namespace always gives the same key, and the memory is bounded."""
    s = AnswerStore("exact", MemoryStore(100, 10**6, time.monotonic), None, "p:")
    a, b = s.redis_key(CacheKey("t:a", "d")), s.redis_key(CacheKey("t:b", "d"))
    assert a == "p:cache:exact:t:a:d" and b == "p:cache:exact:t:b:d"
    hidden = s.claim_key(CacheKey("k:sk-live-secret", "d"))
    assert "secret" not in hidden and hidden.startswith("p:cache:exact:h:")
    assert hidden == s.redis_key(CacheKey("k:sk-live-secret", "d"))  # the claim lives at its entry's key
    assert s.claim_key(CacheKey("k:sk-live-secret", "d")) == hidden
    for i in range(MAX_TOKENS + 10):
        s.redis_key(CacheKey(f"t:n{i}", "d"))
    assert 0 < len(s._tokens) <= MAX_TOKENS
    assert s.redis_key(CacheKey("t:a", "d")) == a and s.claim_key(CacheKey("k:sk-live-secret", "d")) == hidden


async def test_the_entrys_write_drops_what_is_held_under_its_key(redis_server: RedisServer) -> None:
    """The entry's write replaces its claim (same key) and drops the write held under that key (the claim's
    release, ``fleet_flight``); the positive control, held under another key, is sent. A follower's ``peek``
    reads entry, claim or nothing in one read."""
    redis = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=redis_server.url), time.monotonic)
    prefix = f"h{secrets.token_hex(3)}:"
    try:
        s, follower = store(redis, prefix), store(redis, prefix)
        stored, refused = CacheKey("t:x", "stored"), CacheKey("t:x", "refused")
        for key in (stored, refused):
            assert (await s.get_or_claim(key, "p1", 5000))[1] is not None
            redis.hold(s.claim_key(key), 60.0, lambda k: Write(("SET", k + ":released", "1")))
        assert await follower.peek(stored) == (None, True)  # the claim holds the key
        s.set(stored, CachedAnswer(operation="chat", body=b'{"choices":[]}', created=1.0), 30)
        assert list(redis._held) == [s.claim_key(refused)]  # the entry's write dropped what was held
        await s.flush()  # sends what is still held
        assert await redis.client.exists(s.claim_key(stored) + ":released") == 0
        assert await redis.client.exists(s.claim_key(refused) + ":released") == 1
        answer, held = await follower.peek(stored)
        assert answer is not None and answer.body == b'{"choices":[]}' and not held
        assert await follower.peek(refused) == (None, True)  # still claimed (nothing released it here)
        assert await follower.peek(CacheKey("t:x", "none")) == (None, False)
    finally:
        await redis.close()


def test_an_encoded_entry_starts_with_the_magic_a_claim_never_does() -> None:
    for body in (b"{}", b"x" * 10_000):  # stored as is, compressed
        assert CachedAnswer(operation="chat", body=body, created=1.0).encode().startswith(ENTRY_MAGIC)


RAW = (b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":'
       b'{"content":"hi"},"finish_reason":null}]}\n\ndata: {"id":"c","object":"chat.completion.chunk",'
       b'"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')


async def test_a_raw_stream_is_shared_raw_and_each_reader_assembles_it(redis_server: RedisServer) -> None:
    """Written raw (``GWC2``), read by another process (a fresh store) and assembled there on its hit, with no
    write back; a raw entry that does not assemble is a miss, counted, and a claim's placeholder is not."""
    redis = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=redis_server.url), time.monotonic)
    prefix = f"r{secrets.token_hex(3)}:"
    try:
        a, b = store(redis, prefix), store(redis, prefix)
        dropped: list[int] = []
        b.memory.on_unusable = lambda: dropped.append(1)
        good, bad, claimed = CacheKey("t:x", "good"), CacheKey("t:x", "bad"), CacheKey("t:x", "claimed")
        a.set(good, CachedAnswer.from_stream("chat", RAW, ["stop"], 1.0), 30)
        a.set(bad, CachedAnswer.from_stream("chat", RAW.replace(b'"hi"', b'"hi'), ["stop"], 1.0), 30)
        await a.flush()
        assert (await raw(redis, a.redis_key(good))).startswith(b"GWC2")
        got = await b.get(good)
        assert got is not None and b'"content":"hi"' in got.body and got.raw is None and dropped == []
        assert (await raw(redis, a.redis_key(good))).startswith(b"GWC2")  # not written back
        assert await b.get(bad) is None and dropped == [1]
        assert (await b.get_or_claim(claimed, "p1", 5000))[1] is not None
        assert await b.get(claimed) is None and await b.peek(claimed) == (None, True) and dropped == [1]
    finally:
        await redis.close()
