"""Shared answer store: the in-memory LRU in front of Redis (when ``state.backend: redis``).

Reads try memory first, then Redis (one round trip: ``GET`` + ``PTTL``), and a
Redis hit is copied into memory for its remaining TTL. ``get_or_claim`` (``ask``, then ``claimed``) is the
same read that, on a miss, also takes the fleet's coalescing claim for the key in
the same round trip (one Lua script; ``policies.cache.fleet_flight``). The claim lives
at the entry's own key, as a placeholder value (the claimer's id, or ``done`` in its grace:
never an entry, whose encoding starts with ``GWC``): writing the entry ends it, with no write
of its own. Writes go to memory at
once and to Redis as a deferred write (``GuardedRedis.defer``: it shares a round
trip with the request's other end-of-answer writes), so a slow Redis never delays an
answer. Every Redis key has a TTL (``SET ... PX``) and entries from 4 KiB are compressed.
Redis trouble of any kind is a miss, never an error or a stall: calls go
through ``GuardedRedis`` (short timeout, its own breaker) and every failure is
swallowed here and counted.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.state.write_behind import Write
from policies.cache.entry import CachedAnswer
from policies.cache.keys import CacheKey, namespace_token
from policies.cache.memory_store import MemoryStore

log = logging.getLogger("gateway.cache")
MAX_TOKENS = 4096  # namespace tokens remembered per store

ENTRY_MAGIC = b"GWC"  # every encoded entry starts so (``CachedAnswer.encode``); a claim never does
# KEYS: the entry (where its claim lives too). ARGV: the claimer, the claim's life in ms.
# A hit: {entry, its PTTL}. A miss: {false, 1} when this call took the claim, else {false, 0, holder}.
LOOKUP_OR_CLAIM = """
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {false, 1}
end
if string.sub(value, 1, 3) == 'GWC' then return {value, redis.call('PTTL', KEYS[1])} end
return {false, 0, value}
"""


@dataclass(slots=True)
class Claim:
    """The fleet claim as a cache lookup left it: taken by this lookup, or held by ``holder``."""

    key: str
    won: bool
    holder: bytes | None  # the claimer's id, b"done" in its grace, None when this lookup took it
    of: CacheKey  # the cache key it was taken for (the coalescing layer's check: no Redis key made again)
    life_ms: int  # how long it lasts: ``fleet_wait_s`` (the coalescing layer need not work it out again)
    used: bool = False  # the coalescing layer took it over (it releases the claim at the answer's end)


class AnswerStore:
    """One kind of cache (``exact``, ``tool``...): memory, plus Redis when configured."""

    def __init__(
        self,
        kind: str,
        memory: MemoryStore,
        redis: Any = None,
        prefix: str = "gw:",
        wall: Callable[[], float] = time.time,
        on_redis_error: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self.memory = memory
        self.redis = redis  # GuardedRedis or None
        self.prefix = prefix
        self.wall = wall
        self.on_redis_error = on_redis_error
        self._lookup_or_claim: Any = None  # the registered script, on first use
        self._tokens: dict[str, str] = {}  # namespace -> its Redis key token (4 uses per cacheable miss)

    def redis_key(self, key: CacheKey) -> str:
        return f"{self.prefix}cache:{self.kind}:{self._token(key.namespace)}:{key.digest}"

    def claim_key(self, key: CacheKey) -> str:
        """Where the fleet's coalescing claim for ``key`` lives: the entry's own key (no text, no secret)."""
        return self.redis_key(key)

    def _token(self, namespace: str) -> str:
        token = self._tokens.get(namespace)
        if token is None:
            if len(self._tokens) >= MAX_TOKENS:  # namespaces from client keys: bounded, not an LRU
                self._tokens.clear()
            token = self._tokens[namespace] = namespace_token(namespace)
        return token

    async def get_or_claim(self, key: CacheKey, owner: str, claim_ms: int) -> tuple[CachedAnswer | None,
                                                                                   Claim | None]:
        """``get``; on a miss in Redis, also the claim (``SET NX PX``), in the same round trip.

        ``(answer, None)`` on a hit, ``(None, Claim)`` on a miss, ``(None, None)`` when Redis was not
        asked (no Redis, a memory hit) or failed: the caller then claims the usual way, or not at all.
        (The exact cache's layer makes the same two steps, ``ask`` and ``claimed``, in its own frame.)
        """
        answer = self.local(key)
        if answer is not None or self.redis is None:
            return answer, None
        rkey = self.redis_key(key)
        try:
            row = await self.ask(rkey, owner, claim_ms)
        except Exception:  # noqa: BLE001 - Redis trouble is a miss, never an error
            row = None
        return self.claimed(key, rkey, row, claim_ms)

    def ask(self, rkey: str, owner: str, claim_ms: int) -> asyncio.Future[Any]:
        """The lookup-and-claim script for ``rkey`` (``redis_key``), sent with this loop pass's other
        commands: a future of its row, for ``claimed`` (a future, not a coroutine: the reply resumes its
        awaiter with no frame between; ``bench/results/2026-12-07-host-state-cost-3.md``). Needs ``redis``."""
        if self._lookup_or_claim is None:
            self._lookup_or_claim = self.redis.script(LOOKUP_OR_CLAIM)
        script = self._lookup_or_claim
        future: asyncio.Future[Any] = self.redis.execute("EVALSHA", script.sha, 1, rkey, owner, claim_ms,
                                                          script=script)
        return future

    def claimed(self, key: CacheKey, rkey: str, row: Any, claim_ms: int) -> tuple[CachedAnswer | None,
                                                                                  Claim | None]:
        """``ask``'s row read: the entry on a hit, the claim on a miss; ``row`` None (Redis failed): neither,
        counted."""
        if row is None:
            self._redis_failed()
            return None, None
        if row[0]:
            return self._remember(key, row[0], row[1]), None
        return None, Claim(rkey, won=row[1] == 1, holder=row[2] if len(row) > 2 else None, of=key,
                           life_ms=claim_ms)

    def _remember(self, key: CacheKey, data: bytes, pttl: Any) -> CachedAnswer | None:
        """Decode an entry read from Redis and keep it in memory for its remaining TTL. A stream stored raw
        is assembled here, by each process on its own first hit (no write back: see ``CachedAnswer``); one
        that does not decode or assemble is a miss, counted."""
        answer = CachedAnswer.decode(data)
        if answer is None or not answer.ready():
            if data.startswith(ENTRY_MAGIC):  # an entry, not a claim's placeholder
                self.memory.unusable()
            return None
        if isinstance(pttl, int) and pttl > 0:
            self.memory.set(key, answer, pttl / 1000)
        return answer

    def local(self, key: CacheKey) -> CachedAnswer | None:
        """This process's entry, if it holds one (all ``get`` answers without Redis; no coroutine)."""
        found = self.memory.get(key)
        return found[0] if found is not None else None

    async def get(self, key: CacheKey) -> CachedAnswer | None:
        answer = self.local(key)
        if answer is not None or self.redis is None:
            return answer
        return await self.shared(key)

    async def peek(self, key: CacheKey) -> tuple[CachedAnswer | None, bool]:
        """``get`` for a fleet follower: the entry, or whether a claim still holds its key (one read)."""
        answer = self.local(key)
        if answer is not None or self.redis is None:
            return answer, False
        rkey = self.redis_key(key)
        try:
            data, pttl = await self.redis.call(lambda r: _get_with_ttl(r, rkey))
        except Exception:  # noqa: BLE001 - RedisUnavailable or anything odd from the client: nothing held
            self._redis_failed()
            return None, False
        if not data:
            return None, False
        if not data.startswith(ENTRY_MAGIC):
            return None, True
        return self._remember(key, data, pttl), False

    async def get_many(self, keys: list[CacheKey]) -> list[CachedAnswer | None]:
        """Memory first, then one Redis round trip for everything memory did not have."""
        out = [self.local(key) for key in keys]
        missing = [i for i, a in enumerate(out) if a is None]
        if not missing or self.redis is None:
            return out
        rkeys = [self.redis_key(keys[i]) for i in missing]
        try:
            rows = await self.redis.call(lambda r: _get_many_with_ttl(r, rkeys))
        except Exception:  # noqa: BLE001 - Redis trouble is a miss, never an error
            self._redis_failed()
            return out
        for i, (data, pttl) in zip(missing, rows, strict=True):
            answer = CachedAnswer.decode(data) if data else None
            if answer is not None:
                out[i] = answer
                if isinstance(pttl, int) and pttl > 0:
                    self.memory.set(keys[i], answer, pttl / 1000)
        return out

    async def shared(self, key: CacheKey) -> CachedAnswer | None:
        """The entry from Redis only (None without Redis): ``get`` for a caller that read ``local`` first."""
        if self.redis is None:
            return None
        rkey = self.redis_key(key)
        try:
            data, pttl = await self.redis.call(lambda r: _get_with_ttl(r, rkey))
        except Exception:  # noqa: BLE001 - RedisUnavailable or anything odd from the client: a miss
            self._redis_failed()
            return None
        if not data:
            return None
        return self._remember(key, data, pttl)

    def set(self, key: CacheKey, answer: CachedAnswer, ttl_s: float, rkey: str | None = None) -> None:
        """Store now in memory; in Redis as a deferred write (it shares a round trip, nobody waits).
        ``answer.encoded``, when set, is ``answer.encode()`` already done off the loop (a large answer, a
        large batch of embeddings); it is taken here and not kept beside the entry. ``rkey``: ``key``'s
        ``redis_key``, when the caller has it already (the exact cache's lookup)."""
        if ttl_s <= 0:
            return
        self.memory.set(key, answer, ttl_s)
        if self.redis is not None:
            ms = max(1, int(ttl_s * 1000))
            data = answer.encoded or answer.encode()
            answer.encoded = None  # not kept in memory beside the answer
            rkey = rkey or self.redis_key(key)
            self.redis.drop(rkey)  # this write ends the key's claim: its held release is not needed
            self.redis.defer(Write(("SET", rkey, data, "PX", ms), on_failure=self._redis_failed))

    async def delete(self, key: CacheKey) -> None:
        self.memory.delete(key)
        if self.redis is not None:
            rkey = self.redis_key(key)
            try:
                await self.redis.call(lambda r: r.delete(rkey))
            except Exception:  # noqa: BLE001 - Redis trouble is a miss, never an error
                self._redis_failed()

    def _redis_failed(self) -> None:
        if self.on_redis_error is not None:
            self.on_redis_error()

    async def flush(self) -> None:
        """Wait for pending background writes (shutdown, tests)."""
        if self.redis is not None:
            await self.redis.drain()


async def _get_with_ttl(r: Any, rkey: str) -> tuple[bytes | None, int]:
    async with r.pipeline(transaction=False) as pipe:
        pipe.get(rkey)
        pipe.pttl(rkey)
        data, pttl = await pipe.execute()
    return data, pttl


async def _get_many_with_ttl(r: Any, rkeys: list[str]) -> list[tuple[bytes | None, int]]:
    async with r.pipeline(transaction=False) as pipe:
        for rkey in rkeys:
            pipe.get(rkey)
            pipe.pttl(rkey)
        flat = await pipe.execute()
    return list(zip(flat[0::2], flat[1::2], strict=True))
