"""Buckets shared by every replica, in Redis, with a local fallback.

Each operation is one atomic Lua script that reads Redis ``TIME``, so replicas
with skewed clocks still agree on refill. Per entity there are at most three
keys, all with TTLs: a hash of token buckets and day budgets, a sorted set of
concurrency slots (score = lease end, so a replica that dies holding slots
loses them after its lease), and a cooldown flag whose TTL is the pause.
Key names hold only configured names and digests, never a client key.

Redis trouble never fails a request: every call goes through ``GuardedRedis``
(timeout, breaker) and on ``RedisUnavailable`` the decision is taken by local
buckets at limit / ``replicas_hint``. A reservation is settled where it was
made; a Redis release that fails is remembered and replayed once Redis answers
again, so concurrency slots do not stay taken until their leases end. Scripts
are ``EVALSHA``'d and re-loaded on ``NOSCRIPT`` (a restarted Redis).

Admissions are one ``ACQUIRE`` call each (the caller waits for the verdict); one may also take a
process's lease of the buckets (``policies.ratelimit.lease``), returned later as a settlement.
Settlements and quota lessons are operations of one ``APPLY`` script: the
updates deferred to one round trip (an answer's lesson at its headers, its
settlements at its end, and those of its neighbours under load) run as one
call, in the order they were made; each operation does exactly what a call
of its own would.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gateway.state.errors import RedisUnavailable
from gateway.state.pipelining import evalsha_args
from gateway.state.write_behind import Write
from policies.ratelimit.buckets import MemoryBuckets
from policies.ratelimit.lease import LeaseAsk
from policies.ratelimit.model import COOLDOWN, DAY_S, NEVER, LimitSet, Verdict
from policies.ratelimit.redis_scripts import ACQUIRE, APPLY

if TYPE_CHECKING:
    from gateway.state.redis_client import GuardedRedis

log = logging.getLogger("gateway.ratelimit")
MAX_OWED = 10_000  # releases kept for replay while Redis is down
REPLAY_BATCH = 500  # owed releases sent per round trip once Redis is back

_KIND = {"bucket": b"b", "slots": b"s", "day": b"d"}
MAX_UPDATES = 256  # updates per APPLY call
_AMOUNTS = slice(8, None, 5)  # where the per-limit amounts (deltas) go in ACQUIRE's (a settlement's) args


@dataclass(frozen=True, slots=True)
class Update:
    """One settlement or lesson for Redis: an ``APPLY`` operation, its two keys and its arguments."""

    keys: tuple[bytes, bytes]
    args: list[Any]  # the operation (b"s" settle, b"l" learn), then its arguments
    owed: bool  # replayed after an outage (settlements), or dropped (lessons: the fallback has them)


def _command(script: Any, updates: Sequence[Update]) -> tuple[Any, ...]:
    """The ``EVALSHA`` of ``APPLY`` that runs ``updates`` in order."""
    keys: list[bytes] = []
    args: list[Any] = []
    for u in updates:
        keys += u.keys
        args += u.args
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


@dataclass(slots=True)
class _Batch:
    """Updates deferred to one round trip, sent as one ``APPLY`` call made when the round trip is built.

    Closed then (or when the round trip failed or ended without building it): the next update opens a
    new batch. A failed round trip owes each settlement (``RedisBuckets.owe``) and drops the lessons.
    """

    script: Any
    owe: Callable[[Update], None]
    updates: list[Update] = field(default_factory=list)
    done: list[Callable[[], None]] = field(default_factory=list)
    command: tuple[Any, ...] | None = None
    closed: bool = False

    def write(self) -> Write:
        return Write((), self.script, on_failure=self.failed, on_done=self.finished, build=self.build)

    def build(self) -> tuple[Any, ...]:
        self.closed = True
        if self.command is None:
            self.command = _command(self.script, self.updates)
        return self.command

    def failed(self) -> None:
        self.closed = True
        for u in self.updates:
            self.owe(u)

    def finished(self) -> None:
        self.closed = True
        for on_done in self.done:
            on_done()


@dataclass(frozen=True, slots=True)
class _Args:
    """A limit set's keys and script arguments that only change with the config, encoded once (the client
    packs bytes as they are); ``None`` is filled in per request (the member, the amounts or deltas at
    ``_AMOUNTS``)."""

    ls: LimitSet
    acquire_keys: tuple[bytes, ...]  # without the cooldown flag for entities that cannot be paused
    acquire: list[Any]  # n, member, lease_ms, hash_ttl_ms, n x (kind, field, capacity, rate, amount)
    settle_keys: tuple[bytes, bytes]
    settle: list[Any]  # b"s", n, member, hash_ttl_ms, n x (kind, field, capacity, rate, delta)
    learn_keys: tuple[bytes, bytes]
    buckets: dict[str, tuple[bytes, bytes, bytes]]  # bucket name -> field, capacity, rate per ms
    ttl_ms: bytes


class RedisBuckets:
    """The ``Buckets`` of a fleet: Redis first, local fallback at limit / ``replicas_hint``."""

    def __init__(
        self, guarded: GuardedRedis, prefix: str, fallback: MemoryBuckets, replicas_hint: int = 1
    ) -> None:
        self.guarded = guarded
        self.prefix = prefix
        self.fallback = fallback
        self.replicas_hint = replicas_hint
        self._acquire = guarded.script(ACQUIRE)
        self._apply = guarded.script(APPLY)
        self._keys: dict[str, tuple[str, str, str]] = {}
        # Keyed by entity, checked by identity: a reloaded config brings new LimitSet objects.
        self._args_of: dict[str, _Args] = {}
        self._local: dict[str, tuple[LimitSet, int, LimitSet]] = {}
        self._batch: _Batch | None = None  # deferred updates waiting for their round trip
        self.owed: list[Update] = []
        self._replaying: asyncio.Task[None] | None = None

    def keys(self, ls: LimitSet) -> tuple[str, str, str]:
        keys = self._keys.get(ls.key)
        if keys is None:
            base = f"{self.prefix}rl:{ls.key}"
            keys = self._keys[ls.key] = (base, base + ":slots", base + ":cool")
        return keys

    def local(self, ls: LimitSet) -> LimitSet:
        """The limit set the fallback enforces: this replica's share."""
        cached = self._local.get(ls.key)
        if cached is not None and cached[0] is ls and cached[1] == self.replicas_hint:
            return cached[2]
        scaled = ls.scaled(self.replicas_hint)
        self._local[ls.key] = (ls, self.replicas_hint, scaled)
        return scaled

    async def acquire(self, ls: LimitSet, amounts: tuple[int, ...], member: str,
                      lease: LeaseAsk | None = None) -> Verdict:
        """Admit one request; with ``lease`` also ask for a lease (``policies.ratelimit.lease``)."""
        static = self._args(ls)
        args = static.acquire.copy()
        args[1] = member
        args[_AMOUNTS] = amounts
        if lease is not None:
            args += [*lease.size, *lease.release, lease.hold_ms]
        try:
            raw = await self.guarded.execute(*evalsha_args(self._acquire, static.acquire_keys, args),
                                             script=self._acquire)
        except RedisUnavailable:
            return self.acquire_local(ls, amounts, member)
        if self.owed and (self._replaying is None or self._replaying.done()):
            self._replaying = asyncio.get_running_loop().create_task(self._replay())  # off the request's path
        return acquire_verdict(ls, raw)

    def acquire_local(self, ls: LimitSet, amounts: tuple[int, ...], member: str) -> Verdict:
        """The local fallback's verdict (this replica's share), as when Redis does not answer."""
        return replace(self.fallback.acquire_now(self.local(ls), amounts, member), local=True)

    def renew(self, ls: LimitSet, lease: LeaseAsk) -> asyncio.Future[Any]:
        """Ask for ``lease`` with an admission of nothing (a lease's renewal, off any request's path): the
        future of the script's reply (``acquire_verdict``), or of ``RedisUnavailable``; no coroutine, no
        task."""
        static = self._args(ls)
        args = static.acquire.copy()
        args[1] = b""
        args[_AMOUNTS] = (0,) * len(ls.limits)
        args += [*lease.size, *lease.release, lease.hold_ms]
        command = evalsha_args(self._acquire, static.acquire_keys, args)
        return self.guarded.execute(*command, script=self._acquire)

    async def settle(self, ls: LimitSet, deltas: Sequence[int], member: str, local: bool = False) -> None:
        if local:
            self.fallback.settle_now(self.local(ls), tuple(deltas), member)
            return
        await self.apply([self.settle_update(ls, deltas, member)])

    def settle_update(self, ls: LimitSet, deltas: Sequence[int], member: str) -> Update:
        """The Redis side of a settlement, to send with others in one call (``apply``, ``defer``)."""
        static = self._args(ls)
        args = static.settle.copy()
        args[2] = member
        args[_AMOUNTS] = deltas
        return Update(static.settle_keys, args, owed=True)

    def give_back_update(self, ls: LimitSet, rest: Sequence[int], granted: Sequence[int]) -> Update:
        """A lease ends: its unused ``rest`` goes back to the buckets and its ``granted`` total stops counting
        as held. Not replayed after an outage: the held figure lapses by itself, and a late one could take
        another process's newer lease out of it."""
        static = self._args(ls)
        args: list[Any] = [b"r", len(ls.limits), static.ttl_ms]
        for lim, r, g in zip(ls.limits, rest, granted):
            args += [*static.buckets[lim.name], r, g]
        return Update(static.settle_keys, args, owed=False)

    async def learn(self, ls: LimitSet, name: str, level: float | None, cooldown_s: float) -> None:
        """Shrink a shared bucket / pause the entity for everyone; the local fallback learns it too."""
        await self.apply([self.learn_update(ls, [] if level is None else [(name, level)], cooldown_s)])

    def learn_update(self, ls: LimitSet, levels: Sequence[tuple[str, float]], cooldown_s: float) -> Update:
        """Lower buckets (name, level) and pause the entity for ``cooldown_s`` (0: no pause), in one call.

        The local fallback learns at once; the returned update teaches Redis (``apply``, ``defer``).
        """
        local = self.local(ls)
        static = self._args(ls)
        args: list[Any] = [b"l", 0, int(cooldown_s * 1000), static.ttl_ms]
        for name, level in levels:
            self.fallback.learn_now(local, name, level, 0.0)
            encoded = static.buckets.get(name)
            if encoded is not None:
                args += [*encoded, level]
                args[1] += 1
        if cooldown_s > 0:
            self.fallback.learn_now(local, "", None, cooldown_s)
        return Update(static.learn_keys, args, owed=False)

    async def apply(self, updates: Sequence[Update]) -> None:
        """Send settlements and lessons in one round trip and one ``APPLY`` call.

        Each update is applied as its own script would (in order, under one ``TIME``). Redis away:
        settlements are kept for replay (``owed``), lessons are dropped (the local fallback has them).
        """
        if not updates:
            return
        write = Write(_command(self._apply, updates), self._apply)
        try:
            await self.guarded.send([write])
        except RedisUnavailable:
            for u in updates:
                self.owe(u)

    def defer(self, update: Update, on_done: Callable[[], None] | None = None) -> None:
        """Send ``update`` without waiting: the updates deferred to one round trip go in one ``APPLY`` call,
        which shares that round trip with other deferred writes (``GuardedRedis.defer``)."""
        batch = self._batch
        if batch is None or batch.closed or len(batch.updates) >= MAX_UPDATES:
            batch = self._batch = _Batch(self._apply, self.owe)
            self.guarded.defer(batch.write())
        batch.updates.append(update)
        if on_done is not None:
            batch.done.append(on_done)

    def owe(self, update: Update) -> None:
        """A settlement Redis did not get: replayed once Redis answers again."""
        if update.owed and len(self.owed) < MAX_OWED:
            self.owed.append(update)

    async def _replay(self) -> None:
        """Send the releases that failed while Redis was down (harmless if Redis lost its data)."""
        owed, self.owed = self.owed, []
        for start in range(0, len(owed), REPLAY_BATCH):
            chunk = owed[start: start + REPLAY_BATCH]
            try:
                await self.guarded.send([Write(_command(self._apply, chunk), self._apply)])
            except RedisUnavailable:
                self.owed.extend(owed[start:])
                return

    def _args(self, ls: LimitSet) -> _Args:
        """The limit set's static keys and arguments, made once per config (floats encoded once: no repr
        per request)."""
        cached = self._args_of.get(ls.key)
        if cached is not None and cached.ls is ls:
            return cached
        per_limit: list[Any] = []
        buckets: dict[str, tuple[bytes, bytes, bytes]] = {}
        ttl_s = 60.0
        for lim in ls.limits:
            name, capacity = lim.name.encode(), repr(lim.capacity).encode()
            rate = repr(lim.rate / 1000).encode()
            per_limit += [_KIND[lim.kind], name, capacity, rate, None]
            if lim.kind == "bucket":
                buckets[lim.name] = (name, capacity, rate)
                if lim.rate > 0:
                    ttl_s = max(ttl_s, lim.capacity / lim.rate + 60)
            elif lim.kind == "day":
                ttl_s = max(ttl_s, DAY_S + 3600)
        ttl_ms = str(int(ttl_s * 1000)).encode()
        h, slots, cool = (k.encode() for k in self.keys(ls))
        n, lease_ms = str(len(ls.limits)).encode(), str(int(ls.lease_s * 1000)).encode()
        cached = self._args_of[ls.key] = _Args(
            ls, (h, slots, cool) if ls.cooldown else (h, slots), [n, None, lease_ms, ttl_ms, *per_limit],
            (h, slots), [b"s", n, None, ttl_ms, *per_limit], (h, cool), buckets, ttl_ms)
        return cached


def acquire_verdict(ls: LimitSet, raw: Sequence[Any]) -> Verdict:
    """``ACQUIRE``'s reply as a verdict."""
    ok, failed, wait_ms = int(raw[0]), int(raw[1]), int(raw[2])
    n = len(ls.limits)
    levels = tuple(float(x) for x in raw[3: 3 + n])
    if ok:
        return Verdict(True, "", 0.0, levels, leased=len(raw) > 3 + n and int(raw[3 + n]) == 1)
    name = COOLDOWN if failed == -1 else ls.limits[failed - 1].name
    return Verdict(False, name, NEVER if wait_ms < 0 else wait_ms / 1000, levels)
