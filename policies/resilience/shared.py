"""Circuit breakers shared by the workers of a host or the replicas of a fleet, through Redis.

The hot path never waits on Redis: ``admit`` reads the local breaker only. Around it:
- each failure counted while closed is added (fire and forget) to a shared count per upstream
  (``<prefix>cb:fails:<name>``, expiring after ``window_s``); the process whose increment
  reaches ``consecutive_failures`` trips its own breaker. A success resets the shared count
  (only when this process saw failures, so healthy traffic costs no Redis call);
- every open and close of a local breaker is published to one hash (``<prefix>cb:open``:
  upstream -> open-until, wall-clock ms) and bumps a version counter (``<prefix>cb:ver``);
- a poll task reads the version every ``poll_s`` (one GET) and the hash only when it moved, then
  opens the local breakers others opened and closes those others closed.
Redis down or slow: every call fails fast (``GuardedRedis``) and each process keeps its own
breakers, exactly as without sharing. Upstream names are config keys, never secrets.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from gateway.state.errors import RedisUnavailable
from policies.resilience.breaker import CircuitBreaker

if TYPE_CHECKING:
    from gateway.state.redis_client import GuardedRedis

log = logging.getLogger("policies.resilience.shared")
POLL_S = 0.25


class SharedBreakers:
    def __init__(self, backend: GuardedRedis, prefix: str, breakers: Mapping[str, CircuitBreaker],
                 clock: Callable[[], float], wall: Callable[[], float] = time.time,
                 poll_s: float = POLL_S, decision: Callable[[str], None] | None = None) -> None:
        self.backend, self.breakers = backend, breakers
        self.decision = decision or (lambda name: None)  # fleet_trip | fleet_open | fleet_close
        self.clock, self.wall, self.poll_s = clock, wall, poll_s
        self._fails = prefix + "cb:fails:"
        self._open_key, self._ver_key = prefix + "cb:open", prefix + "cb:ver"
        self._version: Any = None
        self._known: dict[str, float] = {}  # the fleet's open breakers at the last read (wall until)
        self._dirty: set[str] = set()  # upstreams whose shared failure count this process raised
        self._applying = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None

    # --- local events -> Redis -------------------------------------------------------------------
    def attach(self, breaker: CircuitBreaker) -> None:
        breaker.on_outcome = self._outcome

    def _outcome(self, breaker: CircuitBreaker, failed: bool) -> None:
        if failed:
            self._spawn(self._count_failure(breaker))
        elif breaker.name in self._dirty:
            self._dirty.discard(breaker.name)
            self._spawn(self._call(lambda r: r.delete(self._fails + breaker.name)))

    async def _count_failure(self, breaker: CircuitBreaker) -> None:
        key, ttl = self._fails + breaker.name, max(1, int(breaker.config.window_s))

        async def incr(r: Any) -> int:
            async with r.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, ttl)
                count, _ = await pipe.execute()
            return int(count)

        with contextlib.suppress(RedisUnavailable):
            count = await self.backend.call(incr)
            self._dirty.add(breaker.name)
            if count >= breaker.config.consecutive_failures and breaker.state == "closed":
                self.decision("fleet_trip")
                breaker.trip()

    def changed(self, breaker: CircuitBreaker, old: str, new: str) -> None:
        """The local breaker moved: publish opens and closes (not what we applied from the fleet)."""
        if self._applying:
            return
        name = breaker.name
        if new == "open":
            until_ms = int((self.wall() + max(0.0, breaker.open_until - self.clock())) * 1000)
            self._spawn(self._publish(lambda p: p.hset(self._open_key, name, until_ms), name))
        elif new == "closed" and old != "closed":
            self._spawn(self._publish(lambda p: p.hdel(self._open_key, name), name))

    async def _publish(self, change: Callable[[Any], Any], name: str) -> None:
        async def run(r: Any) -> None:
            async with r.pipeline(transaction=True) as pipe:
                change(pipe)
                pipe.delete(self._fails + name)
                pipe.incr(self._ver_key)
                await pipe.execute()

        await self._call(run)

    # --- Redis -> local breakers -----------------------------------------------------------------
    def start(self) -> None:
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            with contextlib.suppress(RedisUnavailable):
                await self.poll()
            await asyncio.sleep(self.poll_s)

    async def poll(self) -> None:
        """One GET of the version; the hash of open breakers only when it moved."""
        version: Any = await self.backend.call(lambda r: r.get(self._ver_key))
        if version == self._version:
            return
        raw: Any = await self.backend.call(lambda r: r.hgetall(self._open_key))
        self._version = version
        fleet = {k.decode(): int(v) / 1000 for k, v in raw.items()}
        self.apply(fleet)

    def apply(self, fleet: Mapping[str, float]) -> None:
        now_wall, now = self.wall(), self.clock()
        self._applying = True
        try:
            for name, breaker in self.breakers.items():
                until = fleet.get(name)
                if until is not None and until > now_wall:
                    if breaker.state != "open":
                        self.decision("fleet_open")
                    breaker.open_remote(now + (until - now_wall))
                elif until is None and name in self._known and breaker.state != "closed":
                    self.decision("fleet_close")
                    breaker.close_remote()
        finally:
            self._applying = False
        self._known = dict(fleet)

    # --- plumbing ----------------------------------------------------------------------------------
    async def _call(self, fn: Callable[[Any], Any]) -> None:
        with contextlib.suppress(RedisUnavailable):
            await self.backend.call(fn)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the pending Redis updates (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.drain()
