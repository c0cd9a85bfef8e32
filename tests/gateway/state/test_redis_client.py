"""GuardedRedis: any failure of a Redis call becomes RedisUnavailable; the guard opens and recovers."""
from __future__ import annotations

import secrets
import time
from typing import Any

import pytest

from gateway.config_model import StateConfig
from gateway.state.errors import RedisUnavailable
from gateway.state.redis_client import GuardedRedis
from gateway.state.write_behind import Write
from tests.support.servers import free_port
from tests.support.until import until


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _guard(clock: _Clock) -> GuardedRedis:
    return GuardedRedis(client=None, timeout_s=0.05, clock=clock, failure_threshold=2, cooldown_s=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("error", [ConnectionResetError("reset"), TimeoutError(),
                                   RuntimeError("unable to perform operation on <TCPTransport closed=True>")])
async def test_failures_become_unavailable_and_open_the_guard(error: Exception) -> None:
    """Resets, timeouts and uvloop's closed-transport RuntimeError all mean 'fall back', never a 500."""
    clock, calls = _Clock(), []
    guard = _guard(clock)
    seen: list[bool] = []
    guard.listeners.append(seen.append)

    async def broken(_client: Any) -> None:
        calls.append(1)
        raise error

    for _ in range(2):
        with pytest.raises(RedisUnavailable):
            await guard.call(broken)
    assert not guard.up and seen == [False]
    with pytest.raises(RedisUnavailable):  # cooling off: Redis is not even tried
        await guard.call(broken)
    assert len(calls) == 2

    async def healthy(_client: Any) -> str:
        return "PONG"

    clock.now = 2.0
    assert await guard.call(healthy) == "PONG"
    assert guard.up and seen == [False, True]


async def test_a_call_cut_by_the_timeout_leaves_no_reply_behind(redis_server: Any) -> None:
    """The client has no per-read socket timeout: ``call`` bounds the whole call. A read it cuts short
    must not leave its late reply on a pooled connection for the next command to read as its own."""
    import time

    from gateway.config_model import StateConfig

    guard = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=redis_server.url, timeout_ms=100),
                                     time.monotonic)
    try:
        await guard.call(lambda r: r.set("cut:k", "v"))
        assert guard.client.connection_pool.connection_kwargs.get("socket_timeout") is None
        with pytest.raises(RedisUnavailable):  # the server answers BLPOP (nil) after 0.4 s: cut at 0.1 s
            await guard.call(lambda r: r.blpop(["cut:empty"], timeout=0.4))
        # a reused connection, had it been kept, would hand this GET the BLPOP's late nil
        assert await guard.call(lambda r: r.get("cut:k")) == b"v"
    finally:
        await guard.close()


async def test_a_held_write_goes_out_after_its_hold_unless_dropped(redis_server: Any) -> None:
    """``hold``: made and deferred once its hold is over; ``drop`` before that cancels it (the positive
    control, held alongside, arrives); ``drain`` sends what is still held at once."""
    g = GuardedRedis.from_config(StateConfig(backend="redis", redis_url=redis_server.url), time.monotonic)
    prefix = f"hold{secrets.token_hex(3)}:"
    made: list[str] = []

    def make(tag: str) -> Write:
        made.append(tag)
        return Write(("SET", prefix + tag, "1"))

    try:
        g.hold("dropped", 0.05, make)
        g.hold("kept", 0.05, make)
        assert g.drop("dropped") and not g.drop("dropped") and not g.drop("never-held")
        await until(lambda: g.client.exists(prefix + "kept"))  # sent once its hold was over
        await g.drain()
        assert await g.client.exists(prefix + "dropped") == 0 and made == ["kept"]  # never even made
        g.hold("drained", 60.0, make)
        await g.drain()
        assert await g.client.exists(prefix + "drained") == 1 and not g._held
    finally:
        await g.close()


async def test_warm_opens_the_lane_before_any_command(redis_server: Any) -> None:
    """Start-up opens the lane (a first burst must not pay for, and count failures on, the first connect)."""
    cfg = StateConfig(backend="redis", redis_url=redis_server.url, timeout_ms=50)
    g = GuardedRedis.from_config(cfg, time.monotonic)
    try:
        assert g.lane is not None and not g.lane.ready  # control: nothing opened it yet
        assert await g.warm(1.0)
        assert g.lane.ready and g.up
    finally:
        await g.close()


async def test_warm_against_no_redis_counts_nothing() -> None:
    """Nothing listening: ``warm`` says so at once and leaves the guard as it was; a command then counts."""
    cfg = StateConfig(backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0", timeout_ms=200)
    g = GuardedRedis.from_config(cfg, time.monotonic)
    try:
        started = time.monotonic()
        assert not await g.warm(1.0)
        assert time.monotonic() - started < 0.5 and g._failures == 0 and g.up
        with pytest.raises(RedisUnavailable):
            await g.execute("GET", "k")
        assert g._failures == 1  # control: a request's pass does count
    finally:
        await g.close()
