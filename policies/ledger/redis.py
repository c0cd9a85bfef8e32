"""The usage ledger in Redis (``state.backend: redis``): every replica writes to one place.

Records go to one Redis stream, ``<key_prefix>usage`` (no tenant or key in the
name), one entry per record holding its JSON. Stream ids are Redis's own
millisecond clock at write time, which is never earlier than the request's
arrival (records are written after a request ends), so a time window maps to
an id range: from ``since`` (less a skew allowance) to the end of the stream,
then filtered by each record's own arrival time. Retention trims by id
(``XTRIM MINID``), so old entries leave in whole macro-nodes, cheaply.

Every call goes through ``GuardedRedis``: when Redis is down a write raises
``RedisUnavailable`` and the writer keeps the batch for the next flush.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from policies.ledger.record import COLUMNS, GROUP_BY, UsageRecord, aggregate

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.state.redis_client import GuardedRedis

PAGE = 1000
SKEW_S = 300.0  # clock difference allowed between a gateway host and Redis


class RedisStore:
    def __init__(self, redis: GuardedRedis, key_prefix: str) -> None:
        self.redis = redis
        self.key = f"{key_prefix}usage"

    async def open(self) -> None:
        """Nothing to create: the stream appears with its first entry."""

    async def write(self, records: Sequence[UsageRecord]) -> None:
        payloads = [orjson.dumps(r.as_row()) for r in records]

        async def send(client: Any) -> None:
            pipe = client.pipeline(transaction=False)
            for payload in payloads:
                pipe.xadd(self.key, {"r": payload})
            await pipe.execute()

        await self.redis.call(send)

    async def query(self, group_by: str, since: float, until: float) -> list[dict[str, Any]]:
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}")
        records: list[UsageRecord] = []
        start = f"{max(0, int((since - SKEW_S) * 1000))}-0"
        while True:
            page = await self.redis.call(self._page_from(start))
            for _id, entry in page:
                record = _decode(entry)
                if record is not None and since <= record.ts <= until:
                    records.append(record)
            if len(page) < PAGE:
                break
            start = "(" + _text(page[-1][0])  # exclusive: continue after the last id seen
        return await asyncio.to_thread(aggregate, records, group_by)

    def _page_from(self, start: str) -> Callable[[aioredis.Redis], Awaitable[Any]]:
        """Read one page of the stream from ``start`` (a closure per page, not over the loop variable)."""
        return lambda client: client.xrange(self.key, min=start, max="+", count=PAGE)

    async def purge(self, before: float) -> int:
        minid = f"{max(0, int(before * 1000))}-0"
        return int(await self.redis.call(lambda c: c.xtrim(self.key, minid=minid, approximate=True)))

    async def close(self) -> None:
        """The Redis pool belongs to the app (``state.backend``), which closes it."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(entry: dict[Any, Any]) -> UsageRecord | None:
    payload = entry.get(b"r", entry.get("r"))
    if payload is None:
        return None
    try:
        row = orjson.loads(payload)
        # a row written before ``continued_from`` existed has one column fewer; it takes the default
        return UsageRecord.from_row(row) if len(COLUMNS) - 1 <= len(row) <= len(COLUMNS) else None
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None
