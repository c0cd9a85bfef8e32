"""Awaited commands of one loop pass share a round trip; each caller gets its own reply or its own error."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.config_model import StateConfig
from gateway.state.errors import RedisUnavailable
from gateway.state.pipelining import evalsha_args
from gateway.state.redis_client import GuardedRedis
from gateway.state.write_behind import Write
from tests.support.redis_trips import round_trips
from tests.support.servers import RedisServer, free_port
from tests.support.until import until

INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def _guarded(url: str, timeout_ms: int = 5000) -> GuardedRedis:
    loop = asyncio.get_running_loop()
    cfg = StateConfig(backend="redis", redis_url=url, timeout_ms=timeout_ms)
    return GuardedRedis.from_config(cfg, loop.time)


def _pipelines(g: GuardedRedis) -> list[list[str]]:
    """Batches sent on the lane (each is one round trip)."""
    return round_trips(g)


async def _connections(g: GuardedRedis) -> int:
    """Connections open: the pool's (``call``) and the lane's (``execute``, ``defer``)."""
    pool: Any = g.client.connection_pool
    lane = 0 if g.lane is None or g.lane._protocol is None or g.lane._protocol.closed else 1
    return len(pool._available_connections) + len(pool._in_use_connections) + lane


async def test_one_pass_of_commands_is_one_round_trip_on_one_connection(redis_server: RedisServer) -> None:
    """50 concurrent commands: one pipeline, one connection, each caller its own reply. Control: the same 50
    through ``call`` open a connection each."""
    g = _guarded(redis_server.url)
    try:
        sent = _pipelines(g)
        await g.client.delete("pl:n")  # one connection of the pool
        replies = await asyncio.gather(*(g.execute("INCRBY", "pl:n", 1) for _ in range(50)))
        assert sorted(replies) == list(range(1, 51)) and len(sent) == 1
        assert await _connections(g) == 2  # that one and the lane's: the 50 commands took no other
        await asyncio.gather(*(g.call(lambda r: r.incrby("pl:n", 1)) for _ in range(50)))
        assert await _connections(g) > 10
        assert await g.client.get("pl:n") == b"100"
    finally:
        await g.close()


async def test_passes_apart_are_round_trips_apart(redis_server: RedisServer) -> None:
    """Commands awaited one after another leave at the end of their own passes: none waits for company."""
    g = _guarded(redis_server.url)
    try:
        sent = _pipelines(g)
        for i in range(3):
            assert await g.execute("SET", f"pl:k{i}", i) == b"OK"  # Redis's own reply (no redis-py callbacks)
        assert len(sent) == 3
    finally:
        await g.close()


async def test_a_refused_command_fails_only_its_caller(redis_server: RedisServer) -> None:
    """WRONGTYPE for one command: that caller gets RedisUnavailable (a local fallback), its neighbours their
    replies."""
    g = _guarded(redis_server.url)
    try:
        await g.client.delete("pl:list", "pl:x")
        await g.client.rpush("pl:list", "a")
        results = await asyncio.gather(g.execute("INCR", "pl:x"), g.execute("INCR", "pl:list"),
                                       g.execute("INCR", "pl:x"), return_exceptions=True)
        assert results[0] == 1 and results[2] == 2
        assert isinstance(results[1], RedisUnavailable) and "ResponseError" in str(results[1])
    finally:
        await g.close()


async def test_a_script_redis_lost_is_loaded_and_its_commands_sent_again(redis_server: RedisServer) -> None:
    """After ``SCRIPT FLUSH`` (a restarted Redis) the pass's EVALSHAs are sent again once, after one load."""
    g = _guarded(redis_server.url)
    try:
        script = g.script(INCR_BY)
        await g.client.delete("pl:s")
        await g.client.script_flush()
        sent = _pipelines(g)
        replies = await asyncio.gather(*(g.execute(*evalsha_args(script, ["pl:s"], [2]), script=script)
                                         for _ in range(4)))
        assert sorted(replies) == [2, 4, 6, 8] and len(sent) == 2  # NOSCRIPT, then again
        assert await g.client.script_exists(script.sha) == [True]
    finally:
        await g.close()


async def test_a_cancelled_caller_leaves_the_others_their_replies(redis_server: RedisServer) -> None:
    """A caller cancelled before its pass leaves: its command is not sent, its neighbour's is."""
    g = _guarded(redis_server.url)
    try:
        await g.client.delete("pl:c")
        first = asyncio.ensure_future(g.execute("INCR", "pl:c"))
        second = asyncio.ensure_future(g.execute("INCR", "pl:c"))
        await asyncio.sleep(0)  # both queued in this pass
        first.cancel()
        assert await second == 1
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await g.client.get("pl:c") == b"1"
    finally:
        await g.close()


async def test_redis_away_fails_the_whole_pass_and_counts_each_command() -> None:
    """Nothing listening: every caller of the pass gets RedisUnavailable, and each counts as a failure, as
    when they went one by one: a pass of 2 leaves the guard up (threshold 3), the next command opens it, and
    then a command is refused at once without a round trip."""
    g = _guarded(f"redis://127.0.0.1:{free_port()}/0", timeout_ms=500)
    try:
        sent = _pipelines(g)
        results = await asyncio.gather(*(g.execute("GET", "pl:x") for _ in range(2)), return_exceptions=True)
        assert all(isinstance(r, RedisUnavailable) for r in results) and g.up
        with pytest.raises(RedisUnavailable):
            await g.execute("GET", "pl:x")
        assert not g.up and len(sent) == 2
        with pytest.raises(RedisUnavailable, match="cooling off"):
            await g.execute("GET", "pl:x")
        assert len(sent) == 2
    finally:
        await g.close()


async def test_a_pass_takes_the_waiting_deferred_writes_along(redis_server: RedisServer) -> None:
    """Deferred writes still waiting for their timer leave with the next pass's awaited commands, ahead of
    them (the GET sees the SET, though the writes' timer is 10 s away), and the timer then sends nothing.
    Control: writes with no awaited company leave alone when their timer fires."""
    g = _guarded(redis_server.url)
    try:
        await g.client.delete("pl:w")
        trips = _pipelines(g)
        g.defer_s = 10.0
        done: list[int] = []
        g.defer(Write(("SET", "pl:w", "deferred"), on_done=lambda: done.append(1)))
        assert await g.execute("GET", "pl:w") == b"deferred"
        assert trips == [["SET"], ["GET"]] and g._flush_at is None
        await until(lambda: done == [1])
        g.defer_s = 0.01
        g.defer(Write(("SET", "pl:w", "alone"), on_done=lambda: done.append(2)))
        await until(lambda: done == [1, 2])
        assert trips[2:] == [["SET"]] and await g.client.get("pl:w") == b"alone"
    finally:
        await g.close()


async def test_a_pass_on_the_open_lane_that_times_out_fails_its_callers_and_the_next_reconnects(
        redis_server: RedisServer) -> None:
    """A pass submitted straight onto the open lane (no task) is bounded by its timer: a reply slower than the
    timeout fails its callers with RedisUnavailable and counts a failure each, the connection is dropped
    (its late reply must not answer the next command), and the next pass reconnects and gets its own reply.
    Control: the same quick command on the open lane, before, answers."""
    g = _guarded(redis_server.url, timeout_ms=150)
    try:
        await g.client.delete("pl:t", "pl:q")
        assert await g.execute("SET", "pl:t", "x") == b"OK"  # opens the lane (the task path)
        protocol = g.lane._protocol if g.lane is not None else None
        assert protocol is not None and not protocol.closed
        assert await g.execute("GET", "pl:t") == b"x"  # control: on the open lane, answered in time
        results = await asyncio.gather(g.execute("BLPOP", "pl:q", 1), g.execute("GET", "pl:t"),
                                       return_exceptions=True)
        assert all(isinstance(r, RedisUnavailable) and "TimeoutError" in str(r) for r in results)
        assert g._failures == 2 and protocol.closed and g._inflight == 0
        await g.client.rpush("pl:q", "late")  # what the abandoned BLPOP would have taken, had it been read
        assert await g.execute("GET", "pl:t") == b"x"  # a new connection, in step
        assert g._failures == 0 and g.up
    finally:
        await g.close()
