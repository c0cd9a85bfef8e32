"""The long-lived admission-control component shared by both rate-limit policies.

One ``RateLimiter`` per process, created by the first rate-limit factory and
kept on ``AppState.components`` across config reloads: it owns the buckets
(memory, or Redis with a local fallback), one admission queue and one
``Pending`` book per upstream, the metrics, and the background tasks that
settle reservations in Redis after an answer has ended (the client's last
byte is never held back by a Redis round trip). With Redis, large rpm/tpm
limits are mostly admitted from this process's lease (``policies.ratelimit.lease``).
The settlements and quota lessons go to Redis as deferred updates (``RedisBuckets.defer``): those of one
round trip run as one script call, and the round trip is shared with the
cache's writes (``GuardedRedis.defer``). One answer's lesson (requests, tokens
and pause) is one update.

A ``Grant`` is one admitted reservation. ``settle(grant, used)`` ends it
exactly once: slots are released and tokens reconciled against what the
answer really used.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.appstate import AppState
from gateway.components import QUEUE_DEPTHS, QUOTA_PAUSED
from gateway.exchange import StateKey
from gateway.telemetry.logging import state_change
from policies.ratelimit.buckets import LimiterClock, MemoryBuckets
from policies.ratelimit.lease import LeaseAsk, Leases
from policies.ratelimit.metrics import RateLimitMetrics
from policies.ratelimit.model import LimitSet, Verdict, upstream_key
from policies.ratelimit.queue import AdmissionQueue
from policies.ratelimit.quota_learning import Pending, lesson
from policies.ratelimit.redis_buckets import RedisBuckets, Update, acquire_verdict

log = logging.getLogger("gateway.ratelimit")
COMPONENT: StateKey[RateLimiter] = StateKey("rate_limit")


@dataclass(slots=True)
class Grant:
    """One admitted reservation, settled exactly once when the answer ends."""

    ls: LimitSet
    amounts: tuple[int, ...]
    member: str
    local: bool
    tokens: int  # reserved: prompt + output limit
    prompt: int
    counted: bool  # its tokens are the request's entry in gateway_tokens_reserved_total
    settled: bool = False
    seq: int = 0  # upstream grants: position in the upstream's Pending book (0: not pending)


@dataclass(slots=True)
class RateLimiter:
    buckets: MemoryBuckets | RedisBuckets
    metrics: RateLimitMetrics
    clock: LimiterClock
    loop_time: Callable[[], float]  # real seconds (the loop's clock), for queue deadlines
    queues: dict[str, AdmissionQueue] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    levels: dict[str, tuple[tuple[float, ...], float]] = field(default_factory=dict)  # last seen, per entity
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Worker processes on this port that each hold their own memory buckets: each enforces 1/share.
    worker_share: int = 1
    _prefix: str = field(default_factory=lambda: secrets.token_hex(6))  # this process, among replicas
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    leases: Leases | None = None  # with Redis: this process's leases of the shared buckets

    def __post_init__(self) -> None:
        if isinstance(self.buckets, RedisBuckets) and self.leases is None:
            self.leases = Leases(now=lambda: self.clock.now(), speed=lambda: self.clock.speed,
                                 give_back=self._give_back, counter=self.metrics.leases.slot,
                                 renew=self._renew)

    @property
    def memory(self) -> MemoryBuckets:
        return self.buckets if isinstance(self.buckets, MemoryBuckets) else self.buckets.fallback

    def queue(self, upstream: str, max_queue: int) -> AdmissionQueue:
        q = self.queues.get(upstream)
        if q is None:
            gauge = self.metrics.depth(upstream)
            q = self.queues[upstream] = AdmissionQueue(max_queue, self.loop_time, on_depth=gauge.set)
        q.max_queue = max_queue
        return q

    async def acquire(self, ls: LimitSet, amounts: tuple[int, ...], member: str) -> Verdict:
        leases = self.leases
        if leases is None or not ls.lease_size:
            buckets = self.buckets
            verdict = buckets.acquire_now(ls, amounts, member) if isinstance(buckets, MemoryBuckets) \
                else await buckets.acquire(ls, amounts, member)  # in-process buckets: no coroutine
        else:
            verdict = leases.take(ls, amounts) or await self._acquire_leasing(leases, ls, amounts, member)
        self.levels[ls.key] = (verdict.levels, self.clock.now())
        return verdict

    async def _acquire_leasing(self, leases: Leases, ls: LimitSet, amounts: tuple[int, ...],
                               member: str) -> Verdict:
        """One admission in Redis, asking for a lease with it when one is worth having."""
        buckets = self.buckets
        assert isinstance(buckets, RedisBuckets)
        ask = leases.ask(ls, amounts)
        if ask is None:
            waiter = leases.join(ls, amounts)
            if waiter is not None:  # the lease on its way is likely to cover this one too
                reached = await waiter
                verdict = leases.take(ls, amounts)
                if verdict is not None:
                    return verdict
                if not reached:  # Redis did not answer the lease request: the local fallback, at once
                    return buckets.acquire_local(ls, amounts, member)
            return await buckets.acquire(ls, amounts, member)
        # Shielded: a caller cancelled meanwhile must not lose a lease Redis granted (it would stay held).
        return await asyncio.shield(self._ask(leases, buckets, ls, amounts, member, ask))

    @staticmethod
    async def _ask(leases: Leases, buckets: RedisBuckets, ls: LimitSet, amounts: tuple[int, ...], member: str,
                   ask: LeaseAsk) -> Verdict:
        try:
            verdict = await buckets.acquire(ls, amounts, member, ask)
        except BaseException:
            leases.failed(ls)
            raise
        return leases.answered(ls, ask.size, verdict)

    def _renew(self, ls: LimitSet) -> None:
        """The lease of ``ls`` is half through its life: ask for the next (an admission of nothing, off any
        request's path; its answer extends the lease and tops it up to its size)."""
        leases, buckets = self.leases, self.buckets
        if leases is None or not isinstance(buckets, RedisBuckets):
            return
        ask = leases.ask(ls, (0,) * len(ls.limits))
        if ask is not None:
            buckets.renew(ls, ask).add_done_callback(functools.partial(self._renewed, leases, ls, ask))

    @staticmethod
    def _renewed(leases: Leases, ls: LimitSet, ask: LeaseAsk, reply: asyncio.Future[Any]) -> None:
        if reply.cancelled() or reply.exception() is not None:  # Redis away: no lease came
            leases.failed(ls)
            return
        leases.answered(ls, ask.size, acquire_verdict(ls, reply.result()))

    def _give_back(self, ls: LimitSet, rest: tuple[int, ...], granted: tuple[int, ...]) -> None:
        """A lease ends: its unused rest goes back to the shared bucket (a deferred settlement)."""
        if isinstance(self.buckets, RedisBuckets):
            self._send(self.buckets.give_back_update(ls, rest, granted), ls)

    def grant(self, ls: LimitSet, verdict: Verdict, amounts: tuple[int, ...], member: str, tokens: int,
              prompt: int, counted: bool) -> Grant:
        if counted:
            self.metrics.reserved.inc(tokens)
        return Grant(ls, amounts, member, verdict.local, tokens, prompt, counted)

    def settle(self, grant: Grant, used: int) -> None:
        """Release slots and reconcile tokens: ``used`` is what the answer really cost."""
        if grant.settled:
            return
        grant.settled = True
        if grant.seq:
            self.pending_of(grant.ls).done(grant.seq)
        delta = grant.tokens - used
        if grant.counted and delta:
            self.metrics.reconciled("refund" if delta > 0 else "charge").inc(abs(delta))
        deltas = tuple(delta if lim.tokens else 0 for lim in grant.ls.limits)
        if not grant.ls.holds_slots and (not delta or not grant.ls.counts_tokens):
            return  # nothing to give back: no round trip
        if isinstance(self.buckets, MemoryBuckets):
            self.buckets.settle_now(grant.ls, deltas, grant.member)
            self._poke(grant.ls)
        elif grant.local:
            self.buckets.fallback.settle_now(self.buckets.local(grant.ls), deltas, grant.member)
            self._poke(grant.ls)
        elif self.leases is not None and self.leases.refund(grant.ls, deltas):
            self._poke(grant.ls)  # kept in this process's lease: no Redis write
        else:
            self._send(self.buckets.settle_update(grant.ls, deltas, grant.member), grant.ls)

    def _send(self, update: Update, poke: LimitSet | None) -> None:
        """Send an update to Redis without waiting (it shares a round trip with other deferred writes)."""
        if isinstance(self.buckets, RedisBuckets):
            self.buckets.defer(update, None if poke is None else functools.partial(self._poke, poke))

    def _poke(self, ls: LimitSet) -> None:
        if ls.scope == "upstream":
            q = self.queues.get(ls.label)
            if q is not None:
                q.poke()

    def pending_of(self, ls: LimitSet) -> Pending:
        book = self.pending.get(ls.key)
        if book is None:
            book = self.pending[ls.key] = Pending()
        return book

    def observe(self, grant: Grant, status: int, headers: Mapping[str, str]) -> None:
        """Response headers arrived: the provider has counted this request; learn what it says."""
        book = self.pending_of(grant.ls)
        uncounted = book.after(grant.seq)
        book.done(grant.seq)
        grant.seq = 0
        if status != 429 and "x-ratelimit-remaining-requests" not in headers \
                and "x-ratelimit-remaining-tokens" not in headers:
            return
        learned = lesson(status, headers, uncounted)
        if learned is None:
            return
        levels: list[tuple[str, float]] = []  # buckets to lower: requests and tokens, taught in one call
        for name, level in (("rpm", learned.requests), ("tpm", learned.tokens)):
            lim = grant.ls.find(name)
            if lim is None:
                continue
            if learned.pause_s > 0 and (status == 429 or (level is not None and level <= 0)):
                # Exhausted until the reset: the bucket must not refill during the pause either, or it
                # would let a burst through when the provider has freed only its oldest entries. One
                # request may go at the reset; the rest follow at the refill rate.
                at_reset = 0.0 if lim.tokens else 1.0
                level = min(at_reset if level is None else level, at_reset - lim.rate * learned.pause_s)
            if level is not None and level < self._projected(grant.ls, name):
                levels.append((name, level))
        if learned.pause_s > 0 and self.memory.cooldown_left(self._local(grant.ls)) <= 0:
            state_change("upstream paused by its provider", upstream=grant.ls.label,
                         seconds=round(learned.pause_s, 3), status=status)
        if levels or learned.pause_s > 0:
            self._learn(grant.ls, levels, learned.pause_s)
        if learned.pause_s > 0:
            self._poke(grant.ls)  # the head re-asks now and learns how long the pause is

    def _learn(self, ls: LimitSet, levels: list[tuple[str, float]], pause_s: float) -> None:
        """Lower ``levels`` (name, level) and pause for ``pause_s`` (0: none): one update for Redis.
        This process's lease of ``ls`` is voided: the provider's figure does not know it."""
        if self.leases is not None:
            self.leases.void(ls)
        if isinstance(self.buckets, MemoryBuckets):
            for name, level in levels:
                self.buckets.learn_now(ls, name, level, 0.0)
            if pause_s > 0:
                self.buckets.learn_now(ls, "", None, pause_s)
        else:
            self._send(self.buckets.learn_update(ls, levels, pause_s), None)

    def _local(self, ls: LimitSet) -> LimitSet:
        return self.buckets.local(ls) if isinstance(self.buckets, RedisBuckets) else ls

    def _projected(self, ls: LimitSet, name: str) -> float:
        """The level last seen for a bucket, plus what it has refilled since (inf: unknown)."""
        seen = self.levels.get(ls.key)
        for i, lim in enumerate(ls.limits):
            if lim.name == name:
                if seen is None or i >= len(seen[0]):
                    return float("inf")
                return min(lim.capacity, seen[0][i] + (self.clock.now() - seen[1]) * lim.rate)
        return float("-inf")  # no such bucket: nothing to shrink

    def paused_for(self, upstream: str) -> float:
        """Seconds ``upstream``'s quota stays paused after a provider 429, as this process learned it (with
        Redis, a pause learned by another replica is only seen when this one next asks for the quota)."""
        return self.memory.cooldown_left_of(upstream_key(upstream)) / self.clock.speed

    def set_clock(self, clock: LimiterClock) -> None:
        """Tests: run the limiter on another clock (e.g. a minute per real second)."""
        self.clock = clock
        self.memory.clock = clock

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("rate-limit background update failed", exc_info=task.exception())

    async def close(self) -> None:
        """Shutdown: give the leases back (after any renewal on its way), then send every pending update."""
        if self.leases is not None:
            await self.drain()
            self.leases.release_all()
        await self.drain()

    async def drain(self) -> None:
        """Wait for background settlements (shutdown, tests)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        if isinstance(self.buckets, RedisBuckets):
            await self.buckets.guarded.drain()

    def member(self) -> str:
        """A request's id in concurrency-slot sets: unique across replicas, cheap to make."""
        return f"{self._prefix}{next(self._ids)}"


def limiter_for(st: AppState) -> RateLimiter:
    """The process's limiter, created on first use (factories run again on reload and reuse it)."""
    limiter = st.components.get(COMPONENT)
    cfg = st.config.state
    if limiter is None:
        clock = LimiterClock(now=st.clock)
        metrics = RateLimitMetrics.register(st.metrics)
        memory = MemoryBuckets(clock)
        buckets: MemoryBuckets | RedisBuckets = memory
        if st.backend is not None:
            buckets = RedisBuckets(st.backend, cfg.key_prefix, memory, cfg.replicas_hint)
        limiter = RateLimiter(buckets=buckets, metrics=metrics, clock=clock, loop_time=st.clock)
        st.components.set(COMPONENT, limiter)
        queues = limiter.queues
        st.components.set(QUEUE_DEPTHS, lambda: {str(name): q.depth for name, q in queues.items()})
        st.components.set(QUOTA_PAUSED, limiter.paused_for)
        st.closers.append(limiter.close)
    workers = max(1, st.workers)
    if isinstance(limiter.buckets, RedisBuckets):
        limiter.buckets.replicas_hint = cfg.replicas_hint * workers  # the fallback share of one worker
        limiter.worker_share = 1
    else:
        limiter.worker_share = workers
    return limiter
