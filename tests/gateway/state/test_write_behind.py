"""Deferred Redis writes: one round trip per loop iteration, in order, scripts re-loaded, failures seen."""
from __future__ import annotations

import asyncio
from typing import Any

from gateway.config_model import StateConfig
from gateway.state.redis_client import GuardedRedis
from gateway.state.write_behind import Write, evalsha
from tests.support.redis_trips import round_trips
from tests.support.servers import RedisServer, free_port

INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def _guarded(url: str) -> GuardedRedis:
    loop = asyncio.get_running_loop()
    return GuardedRedis.from_config(StateConfig(backend="redis", redis_url=url, timeout_ms=200), loop.time)


def _counting(g: GuardedRedis) -> list[list[str]]:
    """Batches sent on the lane (each is one round trip)."""
    return round_trips(g)


async def test_writes_of_one_iteration_share_one_round_trip(redis_server: RedisServer) -> None:
    g = _guarded(redis_server.url)
    calls = _counting(g)
    done: list[str] = []
    try:
        script = g.script(INCR_BY)
        await g.client.delete("wb:n", "wb:s")
        await g.client.script_load(INCR_BY)
        g.defer(Write(("SET", "wb:s", "a")))
        g.defer(evalsha(script, ["wb:n"], [2], on_done=lambda: done.append("x")))
        g.defer(Write(("APPEND", "wb:s", "b")))
        await g.drain()
        assert len(calls) == 1 and done == ["x"]
        assert await g.client.get("wb:s") == b"ab" and await g.client.get("wb:n") == b"2"  # in order
        await g.client.script_flush()  # a restarted Redis lost the script: loaded and sent again
        g.defer(evalsha(script, ["wb:n"], [3]))
        g.defer(Write(("APPEND", "wb:s", "c")))
        await g.drain()
        assert await g.client.get("wb:n") == b"5" and await g.client.get("wb:s") == b"abc"
        assert len(calls) == 3  # the batch, then the write whose script was missing, once more
        g.defer(Write(("SET", "wb:s", "d")))  # positive control of the count: a later iteration, a new trip
        await g.drain()
        assert len(calls) == 4
    finally:
        await g.close()


async def test_a_failed_round_trip_reports_every_write() -> None:
    g = _guarded(f"redis://127.0.0.1:{free_port()}/0")
    failed: list[int] = []
    done: list[int] = []
    try:
        for i in range(3):
            g.defer(Write(("SET", f"wb:{i}", "v"), on_failure=lambda i=i: failed.append(i),
                          on_done=lambda i=i: done.append(i)))
        await g.drain()
        assert failed == [0, 1, 2] and done == [0, 1, 2]
    finally:
        await g.close()


async def test_a_write_made_when_its_round_trip_leaves(redis_server: RedisServer) -> None:
    """``build`` makes the command when the round trip is built (not when deferred), and again for the
    re-send after a NOSCRIPT."""
    g = _guarded(redis_server.url)
    built: list[int] = []
    try:
        script = g.script(INCR_BY)
        await g.client.delete("wb:b")
        await g.client.script_flush()
        amount = [1]

        def build() -> tuple[Any, ...]:
            built.append(amount[0])
            return ("EVALSHA", script.sha, 1, "wb:b", amount[0])

        g.defer(Write((), script, build=build))
        amount[0] = 4  # changed after the defer, before the round trip: the write carries 4
        await g.drain()
        assert await g.client.get("wb:b") == b"4" and built == [4, 4]  # NOSCRIPT: sent again, as built
    finally:
        await g.close()

