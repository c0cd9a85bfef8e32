"""One guarded Redis connection pool shared by every feature (limits, cache, ledger).

Redis must never be the reason a request fails or stalls: each call gets the
configured ``timeout_ms``; after ``failure_threshold`` consecutive failures the
client stops calling Redis for ``cooldown_s`` (its own small breaker) and every
caller gets ``RedisUnavailable`` at once, so features fall back to local state
or a cache miss. The first call after the cooldown probes Redis; success flips
it back up. Up/down changes are logged once and reported to listeners (the
``gateway_state_backend_up`` gauge). Lua scripts are run through
``redis.asyncio``'s Script objects, which re-load themselves after ``NOSCRIPT``
(a restarted Redis that lost its scripts). Writes nobody waits for go through
``defer`` and share round trips (``gateway.state.write_behind``); awaited single
commands go through ``execute`` and share a round trip with the other commands
of the same loop pass (``gateway.state.pipelining``). Both travel on the ``Lane``
(``gateway.state.lane``), one connection with hiredis packing and parsing; on an open lane a batch is
submitted from the loop callback that has it and settled from the lane's ``data_received``
(``gateway.state.settling``; the lane's one watchdog timer bounds it), with no task or ``asyncio.timeout``
per round trip;
connecting, probing after the cooling off and re-sending after ``NOSCRIPT`` take the task path. ``call``
uses redis-py's pool.
"""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import DataError, RedisError

from gateway.config_model import StateConfig
from gateway.state.errors import RedisUnavailable
from gateway.state.lane import Lane
from gateway.state.pipelining import Call, send_calls
from gateway.state.settling import Sent, SentCalls, SentWrites
from gateway.state.write_behind import MAX_BATCH, Write, commands, send
from gateway.telemetry.logging import state_change

T = TypeVar("T")


@dataclass(slots=True)
class GuardedRedis:
    client: aioredis.Redis
    timeout_s: float
    clock: Callable[[], float]
    failure_threshold: int = 3
    cooldown_s: float = 2.0
    up: bool = True
    _failures: int = 0
    _retry_at: float = 0.0
    listeners: list[Callable[[bool], None]] = field(default_factory=list)

    scope: str = "fleet"  # who shares it: "fleet" (state.backend: redis) or "host" (the supervisor's)
    defer_s: float = 0.001  # deferred writes wait this long for company (a request's answer, its neighbours)
    _writes: list[Write] = field(default_factory=list)  # deferred, not sent yet
    _flush_at: asyncio.TimerHandle | None = None  # the deferred writes leave then, unless a pass takes them
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _calls: list[Call] = field(default_factory=list)  # awaited commands of this loop pass, not sent yet
    lane: Lane | None = None  # the connection of ``execute``, ``defer`` and ``send`` (from the client's pool)
    # Writes held back (``hold``): tag -> (when deferred, what makes it), oldest first; ``drop`` cancels.
    _held: dict[str, tuple[float, Callable[[str], Write]]] = field(default_factory=dict)
    _held_at: asyncio.TimerHandle | None = None  # the oldest held write is due then
    _inflight: int = 0  # batches submitted to the lane without a task (``_submit``), not settled yet
    _idle: asyncio.Future[None] | None = None  # ``drain`` waits on it for the last of them

    @classmethod
    def from_config(cls, cfg: StateConfig, clock: Callable[[], float],
                    url: str | None = None) -> GuardedRedis:
        """The configured Redis, or (``url``) the host-local one the supervisor started."""
        timeout = cfg.timeout_ms / 1000
        # No per-read socket timeout: ``call`` bounds every call as a whole (a read cancelled by it
        # disconnects that connection, so none is reused out of step); a timeout per pipelined reply
        # was 5% of a request's CPU with shared state.
        client = aioredis.from_url(url or cfg.redis_url, socket_timeout=None,
                                   socket_connect_timeout=timeout, retry_on_timeout=False,
                                   health_check_interval=0, max_connections=512)
        return cls(client=client, timeout_s=timeout, clock=clock, scope="host" if url else "fleet",
                   lane=Lane(client.connection_pool))

    async def call(self, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``fn(client)`` within the timeout, or raise ``RedisUnavailable``."""
        return await self._bounded(fn, self.client)

    async def warm(self, within_s: float) -> bool:
        """Open the lane before the first request (start-up), within ``within_s``. A process's first connect
        (redis-py's handshake, code run for the first time) can take longer than ``timeout_ms`` on a loaded
        machine, and a first loop pass of many commands failing on it counts a failure per command: the
        backend would cool off for ``cooldown_s`` from the first burst. A failure here counts nothing (the
        first request's pass probes as usual). True when the lane is open."""
        try:
            async with asyncio.timeout(within_s):
                await self._lane().run([("PING",)])
        except (RedisError, OSError, TimeoutError, RuntimeError):
            return False
        return True

    async def send(self, writes: list[Write], reload: bool = False) -> None:
        """Run ``writes`` now, in one round trip on the lane (an awaited ``defer``); or RedisUnavailable.
        ``reload``: load their scripts first (Redis answered ``NOSCRIPT`` to them)."""
        await self._bounded(functools.partial(send, writes=writes, reload=reload), self._lane())

    def _lane(self) -> Lane:
        if self.lane is None:
            self.lane = Lane(self.client.connection_pool)
        return self.lane

    async def _bounded(self, fn: Callable[[Any], Awaitable[T]], target: Any) -> T:
        if not self.up and self.clock() < self._retry_at:
            raise RedisUnavailable("redis cooling off")
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await fn(target)
        # RuntimeError: uvloop refuses writes on a transport that a dying Redis just closed.
        except (RedisError, OSError, TimeoutError, RuntimeError) as exc:
            self.failed(exc)
            raise RedisUnavailable(type(exc).__name__) from exc
        self._succeeded()
        return result

    def execute(self, *args: Any, script: Any = None) -> asyncio.Future[Any]:
        """One command (``script``: the registered script an ``EVALSHA`` runs), sent with the other
        commands of this loop pass in one round trip: a future of its reply, or of ``RedisUnavailable``
        (a future, not a coroutine: one frame less between the caller and the reply)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.up and self.clock() < self._retry_at:
            future.set_exception(RedisUnavailable("redis cooling off"))
            return future
        if not self._calls:
            loop.call_soon(self._send_pass)
        self._calls.append(Call(args, future, script))
        return future

    def _send_pass(self) -> None:
        """The awaited commands of the pass; the deferred writes still waiting for their round trip go first,
        in the same one. Written at once: this callback is the pass's end (queued by its first ``execute``),
        no loop turn more before they leave."""
        calls, self._calls = self._calls, []
        if self._writes:
            self._flush(self._take_writes())
        if len(calls) == 1:  # the usual pass at low load: one lookup (no slicing, no comprehensions)
            if not calls[0].future.done() and not self._submit(SentCalls(self, calls), [calls[0].args], True):
                self._spawn(self._round_trip(calls))
            return
        for start in range(0, len(calls), MAX_BATCH):
            chunk = calls[start: start + MAX_BATCH] if len(calls) > MAX_BATCH else calls
            pending = [c for c in chunk if not c.future.done()]  # a cancelled caller needs nothing
            last = start + MAX_BATCH >= len(calls)
            if pending and not self._submit(SentCalls(self, pending), [c.args for c in pending], last):
                self._spawn(self._round_trip(pending))

    def _submit(self, sent: Sent, commands: list[tuple[Any, ...]], write: bool = False) -> bool:
        """``sent``'s batch straight onto the open lane: no task, no coroutine, no ``asyncio.timeout`` (it is
        settled from the lane's ``data_received``, bounded by the lane's watchdog; ~a third of the client work
        of the task path, ``bench/results/2026-12-07-host-state-cost.md``). False when the lane is not open or
        Redis is cooling off: the caller takes the task path, which connects or probes. ``write``: written
        now (``Lane.submit``)."""
        lane = self.lane
        if lane is None or not self.up:
            return False
        try:
            if not lane.submit(commands, sent, asyncio.get_running_loop().time() + self.timeout_s, write):
                return False
        except DataError as exc:  # an argument Redis cannot take: the batch fails, as on the task path
            sent.settle(exc)
            return True
        self._inflight += 1
        return True

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _round_trip(self, calls: list[Call], reload: bool = False) -> None:
        try:
            send = functools.partial(send_calls, calls=calls, refused=self.failed, reload=reload)
            await self._bounded(send, self._lane())
        except RedisUnavailable as exc:
            if exc.__cause__ is not None:  # a real failure, not the cooling off: each command counts
                for _ in calls[1:]:  # as one, as when they went one by one
                    self.failed(exc.__cause__)
            for c in calls:
                if not c.future.done():
                    c.future.set_exception(RedisUnavailable(str(exc)))
        except BaseException:
            for c in calls:  # cancelled at shutdown: nobody may wait forever
                if not c.future.done():
                    c.future.set_exception(RedisUnavailable("closing"))
            raise

    def failed(self, exc: BaseException) -> None:
        """A command or round trip failed: counts towards the cooling off."""
        self._failures += 1
        if self.up and self._failures >= self.failure_threshold:
            self.up = False
            state_change("state backend down", backend="redis", error=type(exc).__name__)
            self._notify(False)
        if not self.up:
            self._retry_at = self.clock() + self.cooldown_s

    def answered(self) -> None:
        """A batch on the lane was answered: Redis is there (nothing to do while all is well)."""
        if self._failures or not self.up:
            self._succeeded()

    def resend_calls(self, calls: list[Call]) -> None:
        """Awaited commands whose script Redis lost (``NOSCRIPT``): loaded and sent again on the task path."""
        self._spawn(self._round_trip(calls, reload=True))

    def resend_writes(self, writes: list[Write]) -> None:
        """Deferred writes whose script Redis lost: loaded, sent again with their hooks, on the task path."""
        self._spawn(self._send_writes(writes, reload=True))

    def batch_answered(self) -> None:
        """A batch submitted to the lane was answered and settled: ``answered`` and ``batch_done`` in one call
        (the usual batch: ``bench/results/2026-12-07-host-state-cost-3.md``)."""
        if self._failures or not self.up:
            self._succeeded()
        self._inflight -= 1  # ``batch_done``, inline
        if not self._inflight and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def batch_done(self) -> None:
        """A batch submitted to the lane settled (``drain`` waits for the last one)."""
        self._inflight -= 1
        if not self._inflight and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _succeeded(self) -> None:
        self._failures = 0
        if not self.up:
            self.up = True
            state_change("state backend up", backend="redis")
            self._notify(True)

    def _notify(self, up: bool) -> None:
        for listener in self.listeners:
            listener(up)

    def script(self, source: str) -> Any:
        return self.client.register_script(source)

    def defer(self, write: Write) -> None:
        """Send ``write`` without waiting: the writes deferred within ``defer_s`` share a round trip (sooner
        when awaited commands leave before: they take the waiting writes along)."""
        if not self._writes:  # the writes of the next few callbacks join this round trip
            self._flush_at = asyncio.get_running_loop().call_later(self.defer_s, self._flush_due)
        self._writes.append(write)

    def hold(self, tag: str, hold_s: float, make: Callable[[str], Write]) -> None:
        """``defer`` ``make(tag)`` in ``hold_s``, unless ``drop(tag)`` comes first: a write that a later one
        may make unnecessary (a coalescing claim's release, ended by the entry's own write), made only if
        it is sent. ``drain`` sends it at once. Held again under the same tag, the later replaces the first
        (one ``hold_s`` for all: the oldest is due first)."""
        loop = asyncio.get_running_loop()
        self._held.pop(tag, None)  # re-inserted last: the dict stays in due order
        self._held[tag] = (loop.time() + hold_s, make)
        if self._held_at is None:
            self._held_at = loop.call_later(hold_s, self._held_due)

    def drop(self, tag: str) -> bool:
        """Cancel the write held under ``tag``; True when there was one."""
        return bool(self._held) and self._held.pop(tag, None) is not None

    def _held_due(self) -> None:
        self._held_at = None
        loop = asyncio.get_running_loop()
        now, held = loop.time(), self._held
        while held:
            tag, (due, make) = next(iter(held.items()))
            if due > now:
                self._held_at = loop.call_later(due - now, self._held_due)
                return
            del held[tag]
            self.defer(make(tag))

    def _release_held(self) -> None:
        """Every held write, deferred now (``drain``: shutdown, tests)."""
        if self._held_at is not None:
            self._held_at.cancel()
            self._held_at = None
        held, self._held = self._held, {}
        for tag, (_, make) in held.items():
            self.defer(make(tag))

    def _flush_due(self) -> None:
        """The deferred writes' time is up (``_take_writes`` inline: this timer has just fired). They leave at
        once: this timer is their pass's end, nothing else comes to join them in it."""
        self._flush_at = None
        writes, self._writes = self._writes, []
        if len(writes) == 1:  # the usual at low load, the entry's ``SET`` alone: ``_flush`` inline, no
            w = writes[0]  # ``commands`` nor ``ready`` (a write that ``build``s gives the same command twice)
            if not self._submit(SentWrites(self, writes), [w.args if w.build is None else w.build()], True):
                self._spawn(self._send_writes(writes))
        elif writes:
            self._flush(writes, write=True)

    def _flush(self, writes: list[Write], write: bool = False) -> None:
        """Send deferred writes: straight onto an open lane, else through the task path (which connects).
        Checked first: a write that ``build``s its command is built once per round trip. ``write``: written
        now (``Lane.submit``), not at the end of the pass."""
        ready = self.up and self.lane is not None and self.lane.ready
        for start in range(0, len(writes), MAX_BATCH):
            batch = writes[start: start + MAX_BATCH] if len(writes) > MAX_BATCH else writes
            last = write and start + MAX_BATCH >= len(writes)
            if not (ready and self._submit(SentWrites(self, batch), commands(batch), last)):
                self._spawn(self._send_writes(batch))

    def _take_writes(self) -> list[Write]:
        """The deferred writes, now on their way (their timer, if still pending, has nothing left to do)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        writes, self._writes = self._writes, []
        return writes

    async def _send_writes(self, writes: list[Write], reload: bool = False) -> None:
        for start in range(0, len(writes), MAX_BATCH):
            batch = writes[start: start + MAX_BATCH]
            try:
                await self.send(batch, reload)
            except RedisUnavailable:
                for w in batch:
                    if w.on_failure is not None:
                        w.on_failure()
            for w in batch:
                if w.on_done is not None:
                    w.on_done()

    async def drain(self) -> None:
        """Wait until every deferred write has been sent, the held ones too (shutdown, tests)."""
        self._release_held()
        while self._tasks or self._writes or self._inflight:
            if self._writes:
                self._flush(self._take_writes())
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            elif self._inflight:  # batches on the lane: their replies, or the lane's watchdog, settle them
                self._idle = asyncio.get_running_loop().create_future()
                await self._idle
                self._idle = None

    async def close(self) -> None:
        await self.drain()
        if self.lane is not None:
            self.lane.close()
        await self.client.aclose()
