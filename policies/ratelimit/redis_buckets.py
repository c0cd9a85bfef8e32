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
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gateway.state.redis_client import GuardedRedis, RedisUnavailable
from gateway.state.write_behind import Write, evalsha, send
from policies.ratelimit.buckets import MemoryBuckets
from policies.ratelimit.model import COOLDOWN, DAY_S, NEVER, LimitSet, Verdict

log = logging.getLogger("gateway.ratelimit")
MAX_OWED = 10_000  # releases kept for replay while Redis is down
REPLAY_BATCH = 500  # owed releases sent per round trip once Redis is back

_PRELUDE = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local day = math.floor(now / 86400000)
local function bucket(key, f, cap, rate)
  local v = redis.call('HMGET', key, f, f .. '@')
  if not v[1] then return cap end
  return math.min(cap, tonumber(v[1]) + (now - tonumber(v[2])) * rate)
end
"""

# KEYS: hash, slots zset, cooldown flag. ARGV: n, member, lease_ms, hash_ttl_ms, then n x
# (kind b|s|d, field, capacity, rate per ms, amount). Returns {ok, failed index (-1 cooldown), wait ms
# (-1 never), free per limit...}; takes from every limit or from none.
ACQUIRE = _PRELUDE + """
local n = tonumber(ARGV[1])
local failed, wait = 0, 0
local cool = redis.call('PTTL', KEYS[3])
if cool > 0 then failed, wait = -1, cool end
local free = {}
for i = 1, n do
  local b = 4 + (i - 1) * 5
  local kind, f, cap, rate, amt = ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]),
    tonumber(ARGV[b + 5])
  local lvl, need = cap, 0
  if kind == 'b' then
    lvl = bucket(KEYS[1], f, cap, rate)
    need = (amt - lvl) / rate
  elseif kind == 's' then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    lvl = cap - redis.call('ZCARD', KEYS[2])
  else
    local v = redis.call('HMGET', KEYS[1], f, f .. '@')
    if v[1] and tonumber(v[2]) == day then lvl = cap - tonumber(v[1]) end
    need = (day + 1) * 86400000 - now
  end
  free[i] = lvl
  if lvl < amt then
    if amt > cap then need = -1 end
    if failed == 0 or (wait ~= -1 and (need == -1 or need > wait)) then failed, wait = i, need end
  end
end
local out = {0, failed, math.ceil(wait)}
if failed == 0 then
  out[1] = 1
  for i = 1, n do
    local b = 4 + (i - 1) * 5
    local kind, f, cap, amt = ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 5])
    if kind == 'b' then
      redis.call('HSET', KEYS[1], f, free[i] - amt, f .. '@', now)
    elseif kind == 's' and amt > 0 then
      redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
      redis.call('PEXPIRE', KEYS[2], ARGV[3])
    elseif kind == 'd' then
      redis.call('HSET', KEYS[1], f, cap - free[i] + amt, f .. '@', day)
    end
    free[i] = free[i] - amt
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
for i = 1, n do out[3 + i] = math.floor(free[i]) end
return out
"""

# KEYS: hash, slots zset. ARGV: n, member, hash_ttl_ms, then n x (kind, field, capacity, rate per ms, delta).
SETTLE = _PRELUDE + """
local n = tonumber(ARGV[1])
for i = 1, n do
  local b = 3 + (i - 1) * 5
  local kind, f, cap, rate, delta = ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]),
    tonumber(ARGV[b + 5])
  if kind == 's' then
    redis.call('ZREM', KEYS[2], ARGV[2])
  elseif delta ~= 0 and kind == 'b' then
    redis.call('HSET', KEYS[1], f, math.min(cap, bucket(KEYS[1], f, cap, rate) + delta), f .. '@', now)
  elseif delta ~= 0 then
    local v = redis.call('HMGET', KEYS[1], f, f .. '@')
    if v[1] and tonumber(v[2]) == day then
      redis.call('HSET', KEYS[1], f, math.max(0, tonumber(v[1]) - delta))
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: hash, cooldown flag. ARGV: field ('' none), capacity, rate per ms, level, cooldown_ms, hash_ttl_ms.
LEARN = _PRELUDE + """
if ARGV[1] ~= '' then
  local level = tonumber(ARGV[4])
  if level < bucket(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])) then
    redis.call('HSET', KEYS[1], ARGV[1], level, ARGV[1] .. '@', now)
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
  end
end
local ms = tonumber(ARGV[5])
if ms > 0 and redis.call('PTTL', KEYS[2]) < ms then redis.call('SET', KEYS[2], '1', 'PX', ms) end
return 1
"""

_KIND = {"bucket": "b", "slots": "s", "day": "d"}


@dataclass(frozen=True, slots=True)
class Update:
    """One settlement or lesson for Redis: a script, its keys and arguments."""

    script: Any  # redis.commands.core.AsyncScript
    keys: list[str]
    args: list[Any]
    owed: bool  # replayed after an outage (settlements), or dropped (lessons: the fallback has them)

    def write(self, **hooks: Any) -> Write:
        return evalsha(self.script, self.keys, self.args, **hooks)


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
        self._settle = guarded.script(SETTLE)
        self._learn = guarded.script(LEARN)
        self._keys: dict[str, tuple[str, str, str]] = {}
        # Keyed by entity, checked by identity: a reloaded config brings new LimitSet objects.
        self._static: dict[str, tuple[LimitSet, list[Any], int]] = {}
        self._local: dict[str, tuple[LimitSet, int, LimitSet]] = {}
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

    async def acquire(self, ls: LimitSet, amounts: tuple[int, ...], member: str) -> Verdict:
        static, ttl_ms = self._static_args(ls)
        args: list[Any] = [len(ls.limits), member, int(ls.lease_s * 1000), ttl_ms]
        for i, amount in enumerate(amounts):
            args.extend(static[i * 4: i * 4 + 4])
            args.append(amount)
        keys = self.keys(ls)
        try:
            raw = await self.guarded.call(lambda r: self._acquire(keys=keys, args=args, client=r))
        except RedisUnavailable:
            return replace(self.fallback.acquire_now(self.local(ls), amounts, member), local=True)
        if self.owed and (self._replaying is None or self._replaying.done()):
            self._replaying = asyncio.get_running_loop().create_task(self._replay())  # off the request's path
        return _verdict(ls, raw)

    async def settle(self, ls: LimitSet, deltas: Sequence[int], member: str, local: bool = False) -> None:
        if local:
            self.fallback.settle_now(self.local(ls), tuple(deltas), member)
            return
        await self.apply([self.settle_update(ls, deltas, member)])

    def settle_update(self, ls: LimitSet, deltas: Sequence[int], member: str) -> Update:
        """The Redis side of a settlement, to send with others in one round trip (``apply``)."""
        static, ttl_ms = self._static_args(ls)
        args: list[Any] = [len(ls.limits), member, ttl_ms]
        for i, delta in enumerate(deltas):
            args.extend(static[i * 4: i * 4 + 4])
            args.append(delta)
        return Update(self._settle, list(self.keys(ls)[:2]), args, owed=True)

    async def learn(self, ls: LimitSet, name: str, level: float | None, cooldown_s: float) -> None:
        """Shrink a shared bucket / pause the entity for everyone; the local fallback learns it too."""
        await self.apply([self.learn_update(ls, name, level, cooldown_s)])

    def learn_update(self, ls: LimitSet, name: str, level: float | None, cooldown_s: float) -> Update:
        """The local fallback learns at once; the returned update teaches Redis (``apply``)."""
        self.fallback.learn_now(self.local(ls), name, level, cooldown_s)
        lim = ls.find(name)
        _, ttl_ms = self._static_args(ls)
        field = name if level is not None and lim is not None and lim.kind == "bucket" else ""
        args: list[Any] = [field, lim.capacity if lim else 0, lim.rate / 1000 if lim else 0, level or 0,
                           int(cooldown_s * 1000), ttl_ms]
        keys = [self.keys(ls)[0], self.keys(ls)[2]]
        return Update(self._learn, keys, args, owed=False)

    async def apply(self, updates: Sequence[Update]) -> None:
        """Send settlements and lessons in one round trip (a non-transactional pipeline of ``EVALSHA``).

        Each update stays one atomic script; only the round trips are shared. Redis away: settlements
        are kept for replay (``owed``), lessons are dropped (the local fallback has them already).
        """
        if not updates:
            return
        writes = [u.write() for u in updates]
        try:
            await self.guarded.call(functools.partial(send, writes=writes))
        except RedisUnavailable:
            for u in updates:
                self.owe(u)

    def defer(self, update: Update, on_done: Callable[[], None] | None = None) -> None:
        """Send ``update`` without waiting, sharing a round trip with other deferred writes."""
        self.guarded.defer(update.write(on_failure=functools.partial(self.owe, update), on_done=on_done))

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
                await self.guarded.call(functools.partial(send, writes=[u.write() for u in chunk]))
            except RedisUnavailable:
                self.owed.extend(owed[start:])
                return

    def _static_args(self, ls: LimitSet) -> tuple[list[Any], int]:
        """Per-limit script arguments that only change with the config, and the hash's TTL."""
        cached = self._static.get(ls.key)
        if cached is None or cached[0] is not ls:
            static: list[Any] = []
            ttl_s = 60.0
            for lim in ls.limits:
                # Encoded once: the client packs bytes as they are (no repr of floats per request).
                static += [_KIND[lim.kind].encode(), lim.name.encode(), repr(lim.capacity).encode(),
                           repr(lim.rate / 1000).encode()]
                if lim.kind == "bucket" and lim.rate > 0:
                    ttl_s = max(ttl_s, lim.capacity / lim.rate + 60)
                elif lim.kind == "day":
                    ttl_s = max(ttl_s, DAY_S + 3600)
            cached = self._static[ls.key] = (ls, static, int(ttl_s * 1000))
        return cached[1], cached[2]


def _verdict(ls: LimitSet, raw: Sequence[Any]) -> Verdict:
    ok, failed, wait_ms = int(raw[0]), int(raw[1]), int(raw[2])
    levels = tuple(float(x) for x in raw[3:])
    if ok:
        return Verdict(True, "", 0.0, levels)
    name = COOLDOWN if failed == -1 else ls.limits[failed - 1].name
    return Verdict(False, name, NEVER if wait_ms < 0 else wait_ms / 1000, levels)
