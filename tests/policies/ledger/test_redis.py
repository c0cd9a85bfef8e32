"""The Redis ledger store on a real Redis: shared stream, windows, retention, Redis down."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gateway.config_model import StateConfig
from gateway.state.errors import RedisUnavailable
from gateway.state.redis_client import GuardedRedis
from policies.ledger.redis import RedisStore
from tests.policies.ledger.test_record import rec
from tests.support.servers import RedisServer


def guarded(url: str) -> GuardedRedis:
    return GuardedRedis.from_config(StateConfig(backend="redis", redis_url=url, timeout_ms=500),
                                    asyncio.get_running_loop().time)


async def test_two_stores_one_stream(redis_server: RedisServer) -> None:
    """Two gateways' stores write to one stream; a query pages through all of it and filters by window."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    g1, g2 = guarded(redis_server.url), guarded(redis_server.url)
    a, b = RedisStore(g1, prefix), RedisStore(g2, prefix)
    now = time.time()
    await a.write([rec(ts=now, tenant="acme")] * 1500)  # more than one XRANGE page
    await b.write([rec(ts=now, tenant="beta")] * 20 + [rec(ts=now - 7200, tenant="old")])
    groups = {g["key"]: g["requests"] for g in await a.query("tenant", now - 60, now + 60)}
    assert groups == {"acme": 1500, "beta": 20}
    assert b.key == f"{prefix}usage"
    await g1.close()
    await g2.close()


async def test_purge_trims_old_entries(redis_server: RedisServer) -> None:
    """Retention trims the stream by id (write time); a cutoff in the future removes everything written."""
    g = guarded(redis_server.url)
    store = RedisStore(g, f"t{uuid.uuid4().hex[:8]}:")
    await store.write([rec(ts=time.time())] * 10)
    await store.purge(time.time() + 3600)
    assert await store.query("tenant", 0, 1e12) == []
    await g.close()


async def test_write_raises_unavailable_when_redis_is_gone() -> None:
    """With no Redis, a write raises RedisUnavailable (the writer keeps the batch)."""
    g = guarded("redis://127.0.0.1:1/0")
    with pytest.raises(RedisUnavailable):
        await RedisStore(g, "x:").write([rec()])
    await g.close()
