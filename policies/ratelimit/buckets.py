"""In-process buckets: the memory backend, and the fallback when Redis is unreachable.

The arithmetic is the same as the Lua scripts in ``redis_buckets``: a request
is checked against every limit of a set and either takes from all of them or
from none (a request refused by its token bucket must not hold a concurrency
slot). Reservations are reconciled later with ``settle``: a positive delta
refunds, a negative one charges an excess, which may leave a bucket in debt
(below zero) so the next requests wait until the excess has been paid back.

Time comes from an injected ``LimiterClock``; waits handed back are in real
seconds (``speed`` lets a test run the limiter's minute in one real second).
State is only touched from the event loop, so no locks are needed.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from policies.ratelimit.model import COOLDOWN, DAY_S, NEVER, Limit, LimitSet, Verdict


@dataclass(frozen=True, slots=True)
class LimiterClock:
    now: Callable[[], float]  # monotonic seconds: bucket refill, cooldowns
    wall: Callable[[], float] = time.time  # epoch seconds: the UTC day of daily budgets
    speed: float = 1.0  # limiter seconds per real second (tests only)


@dataclass(slots=True)
class MemoryBuckets:
    clock: LimiterClock
    _levels: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # -> [level, updated_at]
    _days: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # -> [day, used]
    _slots: dict[str, dict[str, float]] = field(default_factory=dict)  # entity -> member -> lease end
    _cool: dict[str, float] = field(default_factory=dict)  # entity -> paused until

    async def acquire(self, ls: LimitSet, amounts: tuple[int, ...], member: str) -> Verdict:
        return self.acquire_now(ls, amounts, member)

    async def settle(self, ls: LimitSet, deltas: tuple[int, ...], member: str, local: bool = False) -> None:
        self.settle_now(ls, deltas, member)

    async def learn(self, ls: LimitSet, name: str, level: float | None, cooldown_s: float) -> None:
        self.learn_now(ls, name, level, cooldown_s)

    def acquire_now(self, ls: LimitSet, amounts: tuple[int, ...], member: str) -> Verdict:
        """Take ``amounts`` from every limit of ``ls``, or from none and say how long to wait."""
        now = self.clock.now()
        failed, wait = "", 0.0
        if ls.cooldown:
            until = self._cool.get(ls.key, 0.0)
            if until > now:
                failed, wait = COOLDOWN, until - now
        levels = [self._free(ls.key, lim, now) for lim in ls.limits]
        for lim, amount, free in zip(ls.limits, amounts, levels):
            if free >= amount:
                continue
            need = self._wait(lim, amount, free)
            if not failed or need > wait:  # the longest wait binds; an unknown (0) one only if alone
                failed, wait = lim.name, need
        if failed:
            return Verdict(False, failed, wait / self.clock.speed if wait != NEVER else NEVER, tuple(levels))
        for i, (lim, amount) in enumerate(zip(ls.limits, amounts)):
            self._take(ls, lim, amount, member, now, levels[i])
            levels[i] -= amount
        return Verdict(True, "", 0.0, tuple(levels))

    def _free(self, key: str, lim: Limit, now: float) -> float:
        if lim.kind == "bucket":
            state = self._levels.get((key, lim.name))
            return lim.capacity if state is None else min(lim.capacity,
                                                          state[0] + (now - state[1]) * lim.rate)
        if lim.kind == "slots":
            held = self._slots.get(key)
            if not held:
                return lim.capacity
            if len(held) >= lim.capacity:  # only a full set is worth sweeping for dead leases
                for member in [m for m, end in held.items() if end <= now]:
                    del held[member]
            return lim.capacity - len(held)
        day = self._days.get((key, lim.name))
        today = self._today()
        return lim.capacity - (day[1] if day is not None and day[0] == today else 0.0)

    def _wait(self, lim: Limit, amount: int, free: float) -> float:
        """Limiter seconds until ``amount`` fits (0: unknown, NEVER: larger than the limit)."""
        if amount > lim.capacity:
            return NEVER
        if lim.kind == "bucket":
            return (amount - free) / lim.rate if lim.rate > 0 else NEVER
        if lim.kind == "day":
            wall = self.clock.wall()
            return ((wall // DAY_S + 1) * DAY_S - wall) * self.clock.speed
        return 0.0

    def _take(self, ls: LimitSet, lim: Limit, amount: int, member: str, now: float, free: float) -> None:
        """Take ``amount`` from ``lim``, whose level at ``now`` is ``free`` (just computed by the caller)."""
        if lim.kind == "bucket":
            level = free
            self._levels[(ls.key, lim.name)] = [level - amount, now]
        elif lim.kind == "slots":
            if amount > 0:
                self._slots.setdefault(ls.key, {})[member] = now + ls.lease_s
        else:
            today = self._today()
            day = self._days.get((ls.key, lim.name))
            used = day[1] if day is not None and day[0] == today else 0.0
            self._days[(ls.key, lim.name)] = [today, used + amount]

    def settle_now(self, ls: LimitSet, deltas: tuple[int, ...], member: str) -> None:
        """Give back (delta > 0) or charge (delta < 0) per limit; release the request's slot."""
        now = self.clock.now()
        for lim, delta in zip(ls.limits, deltas):
            if lim.kind == "slots":
                held = self._slots.get(ls.key)
                if held is not None:
                    held.pop(member, None)
            elif delta == 0:
                continue
            elif lim.kind == "bucket":
                level = self._free(ls.key, lim, now)
                self._levels[(ls.key, lim.name)] = [min(lim.capacity, level + delta), now]
            else:
                day = self._days.get((ls.key, lim.name))
                if day is not None and day[0] == self._today():
                    day[1] = max(0.0, day[1] - delta)

    def learn_now(self, ls: LimitSet, name: str, level: float | None, cooldown_s: float) -> None:
        """Shrink one bucket to the provider's view; pause the entity for ``cooldown_s`` (limiter s)."""
        now = self.clock.now()
        lim = ls.find(name)
        if level is not None and lim is not None and lim.kind == "bucket":
            current = self._free(ls.key, lim, now)
            if level < current:
                self._levels[(ls.key, lim.name)] = [level, now]
        if cooldown_s > 0:
            self._cool[ls.key] = max(self._cool.get(ls.key, 0.0), now + cooldown_s)

    def cooldown_left(self, ls: LimitSet) -> float:
        return self.cooldown_left_of(ls.key)

    def cooldown_left_of(self, key: str) -> float:
        """Limiter seconds the entity ``key`` stays paused (0: not paused)."""
        until = self._cool.get(key)
        return 0.0 if until is None else max(0.0, until - self.clock.now())

    def level(self, ls: LimitSet, name: str) -> float:
        """What a limit has left now (tests and the admin view)."""
        lim = ls.find(name)
        return 0.0 if lim is None else self._free(ls.key, lim, self.clock.now())

    def _today(self) -> float:
        return self.clock.wall() // DAY_S
