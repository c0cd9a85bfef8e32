"""The semantic cache's index shared by every replica: Redis 8 vector sets (``VADD``/``VSIM``).

One vector set per exact semantic namespace, and the tenant is part of its key:
``<prefix>vs:<tenant token>:<namespace digest>`` (the same tenant token as the exact cache's keys), so
a search is confined to one tenant's namespace exactly as hard as the exact cache: another tenant's
vectors are in another key and never scored. Elements are named by a hash of the question; the answer
(with the question's text, for the guards) is a normal key with the entry's TTL
(``<prefix>vsa:<tenant token>:<digest>:<element>``), and an element whose answer expired is removed
when a search meets it. Vectors are stored unquantized (``NOQUANT``) so scores match the local index.

Used behind the local index (a local hit never asks Redis); the local index also keeps every entry
stored here, so Redis down or an older Redis without vector sets (logged once) leaves each replica
with its own index, as before.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.state.errors import RedisUnavailable
from policies.cache.entry import CachedAnswer
from policies.cache.guards import TEXT_CHARS, question_digest
from policies.cache.keys import namespace_token
from policies.cache.vector_index import TOP_K, Item

if TYPE_CHECKING:
    from gateway.state.redis_client import GuardedRedis

log = logging.getLogger("gateway.cache")
SEARCH_COUNT = TOP_K * 4  # near-duplicates the guards veto must not hide the right entry


class SharedVectors:
    def __init__(self, backend: GuardedRedis, prefix: str, wall: Callable[[], float],
                 on_error: Callable[[], None] | None = None) -> None:
        self.backend, self.prefix, self.wall = backend, prefix, wall
        self.on_error = on_error
        self.available: bool | None = None  # does this Redis have vector sets? asked once (probe())
        self._tasks: set[asyncio.Task[None]] = set()

    def keys(self, namespace: str) -> tuple[str, str]:
        """(vector set key, answer key prefix) of a semantic namespace ``<tenant ns>:<digest>``."""
        tenant, _, digest = namespace.rpartition(":")
        base = f"{namespace_token(tenant)}:{digest}"
        return f"{self.prefix}vs:{base}", f"{self.prefix}vsa:{base}:"

    async def candidates(self, namespace: str, vector: np.ndarray) -> list[tuple[float, Item]]:
        """The namespace's entries nearest to ``vector`` (cosine, best first); [] on any trouble."""
        if not await self.probe():
            return []
        vkey, akey = self.keys(namespace)
        blob = np.asarray(vector, dtype=np.float32).tobytes()
        try:
            raw: Any = await self.backend.call(lambda r: _vsim(r, vkey, blob))
            if not raw:
                return []
            pairs = _pairs(raw)
            found: Any = await self.backend.call(lambda r: r.mget([akey + name for name, _ in pairs]))
        except RedisUnavailable:
            self._failed()
            return []
        out, gone = [], []
        for (name, score), data in zip(pairs, found, strict=True):
            answer = CachedAnswer.decode(data) if data else None
            if answer is None:
                gone.append(name)
                continue
            digest = bytes.fromhex(name[1:]) if name.startswith("l") else b""  # see add()
            out.append((2.0 * score - 1.0, Item(answer, answer.text, 0.0, digest)))  # score = (1 + cos) / 2
        if gone:
            self._spawn(self._call(lambda r: r.execute_command("VREM", vkey, *gone)))
        return out

    def add(self, namespace: str, vector: np.ndarray, answer: CachedAnswer, text: str, ttl_s: float,
            digest: bytes | None = None) -> None:
        """Store in the background: the answer key (with its TTL) first, then the vector (``digest`` as
        :meth:`VectorIndex.add`)."""
        if self.available is False or ttl_s <= 0:
            return
        vkey, akey = self.keys(namespace)
        # As the local index: the guards read at most TEXT_CHARS of the question; a longer one is named by
        # its whole SHA-256 ("l" + hex), which a candidate's question must then match exactly.
        digest = question_digest(text) if digest is None else digest
        name = "l" + digest.hex() if digest else "s" + hashlib.sha256(text.encode()).hexdigest()[:32]
        blob = np.asarray(vector, dtype=np.float32).tobytes()
        data, ms = replace(answer, text=text[:TEXT_CHARS]).encode(), max(1, int(ttl_s * 1000))

        async def write(r: Any) -> None:
            async with r.pipeline(transaction=False) as pipe:
                pipe.set(akey + name, data, px=ms)
                pipe.execute_command("VADD", vkey, "FP32", blob, name, "NOQUANT")
                pipe.pexpire(vkey, ms, nx=True)  # the set lives as long as its longest-lived entry
                pipe.pexpire(vkey, ms, gt=True)
                await pipe.execute()

        async def store() -> None:
            if await self.probe():
                await self._call(write)

        self._spawn(store())

    async def probe(self) -> bool:
        """Ask once whether Redis has vector sets (Redis 8); an older one is not an outage: log it once.

        Asked (``INFO server``) outside ``GuardedRedis.call``, so an old server's answer never
        counts as a Redis failure for the other features."""
        if self.available is None:
            try:
                async with asyncio.timeout(self.backend.timeout_s):
                    info: Any = await self.backend.client.info("server")
            except Exception:  # noqa: BLE001 - Redis away: ask again next time
                return False
            self.available = int(str(info.get("redis_version", "0")).split(".")[0]) >= 8
            if not self.available:
                log.warning("shared semantic index unavailable (needs Redis 8 vector sets): each replica "
                            "keeps its own", extra={"fields": {"event": "shared_vectors_unavailable"}})
        return self.available

    async def _call(self, fn: Callable[[Any], Any]) -> None:
        try:
            await self.backend.call(fn)
        except RedisUnavailable:
            self._failed()

    def _failed(self) -> None:
        if self.on_error is not None:
            self.on_error()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def _vsim(r: Any, vkey: str, blob: bytes) -> Any:
    return await r.execute_command("VSIM", vkey, "FP32", blob, "WITHSCORES", "COUNT", SEARCH_COUNT)


def _pairs(raw: Any) -> list[tuple[str, float]]:
    """VSIM ... WITHSCORES: a flat [name, score, ...] list (RESP2) or a map (RESP3)."""
    items = list(raw.items()) if isinstance(raw, dict) else list(zip(raw[0::2], raw[1::2], strict=True))
    return [(k.decode() if isinstance(k, bytes) else str(k), float(v)) for k, v in items]
