"""Per-process leases of shared rate-limit capacity: most admissions need no Redis round trip.

With shared state every admission was one ``ACQUIRE`` call. A process may instead take a *lease*: a small
share of each bucket (``LimitSet.lease_size``, ``rate_limit.lease`` x capacity) taken out of the shared
bucket atomically by the ``ACQUIRE`` of the request that asks for it, then spent locally by later requests
with no round trip. Only sets of rpm/tpm buckets are leased: concurrency slots and daily budgets are
checked in the shared state by every request.

Exactness: a lease's tokens leave the shared bucket before any request spends them, and Redis counts what
leases hold per bucket (``redis_scripts``: a bucket never refills above its capacity minus what is held;
each lease request releases what the process spent from its lease since its previous one, ``ask``),
so the shared level plus every process's lease never exceeds the capacity: together the processes admit
nothing a single bucket would not have. Redis grants none when a bucket would keep less than half its
capacity after the lease (``redis_scripts.LEASE_FLOOR``): small limits (a lease under one unit) and limits
near exhaustion are admitted per request, exactly as without leases. What a lease costs is
under-admission, bounded by two leases per set and process (one request at a time asks, ``asking``; a
lease request asks for what brings each bucket's lease back to its size, and a token bucket's spent tokens
stay held only up to what keeps the lease within twice its size, as room for the refunds of answers still
in flight) while the process spends from it, and for at most its lifetime (``ttl_s``) after its last grant
once nobody does (a lease nobody spent from is not renewed): then its unused rest goes back to
the shared bucket (an ``APPLY`` operation on the deferred path; dropped if Redis is down, like the lease
of a process that dies: what it held stops counting as held ``HOLD_MARGIN_MS`` after its expiry).
A lease spent from is renewed in the background half through its life (``sweep``: an admission of
nothing, which extends it and tops it up), so a busy set is never without one; admissions that find no
lease while one is on its way wait for it (``join``) instead of each making a round trip. At 32 requests in
flight these took the rate-limit work from 0.13 ``ACQUIRE`` and 0.21 settlements sent to Redis per
request to none (``bench/results/2026-12-07-host-state-cost-4.md``). An answer's unused reservation
is kept in a live lease rather than sent (``refund``, up to what the lease was granted); a charge (an
answer that used more than it reserved) goes to the shared bucket at once, as without leases. A quota
lesson or a pause from the provider voids the lease at once (its rest is not given back: the provider's
figure is the truth).
Each decision is counted in ``gateway_rate_limit_lease_total{scope, outcome}``.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from operator import add
from typing import Protocol

from policies.ratelimit.model import LimitSet, Verdict

LEASE_TTL_S = 1.0  # limiter seconds a lease lives after its last grant
HOLD_MARGIN_MS = 1000  # Redis counts a lease as held this long past its expiry (the give-back, a slow loop)
RENEW_AT = 0.5  # of a lease's lifetime: then a lease spent from since its grant is renewed in the background
OUTCOMES = ("granted", "refused", "spent", "returned", "voided", "joined")


class Counted(Protocol):
    """A counter's fast slot (``gateway.telemetry.metrics.Children.slot``)."""

    def inc(self, amount: float) -> None: ...


@dataclass(frozen=True, slots=True)
class LeaseAsk:
    """A lease asked for with one admission (``ACQUIRE``'s extra arguments)."""

    size: tuple[int, ...]  # per limit
    release: tuple[int, ...]  # per limit: spent from the current lease since the last ask (no longer held)
    hold_ms: int  # Redis counts the lease as held this long (past its expiry on our clock)


@dataclass(slots=True)
class Lease:
    ls: LimitSet
    left: list[int]  # per limit: what may still be admitted locally
    granted: list[int]  # per limit: what the shared state counts as held by this lease (>= left)
    shared: tuple[float, ...]  # the shared levels after the last grant (for the x-ratelimit headers)
    expires: float  # limiter clock
    renew_at: float = 0.0  # limiter clock: the timer renews it then if it was spent from (``used``)
    used: bool = False  # a request was admitted from it since its last grant
    spent: Counted | None = None  # its set's ``spent`` counter, resolved once per lease (one call a take)


@dataclass(slots=True)
class Leases:
    """This process's leases, one per limit set at most."""

    now: Callable[[], float]  # the limiter clock
    speed: Callable[[], float]  # limiter seconds per real second (timers run on the loop's clock)
    # A lease ends: (its set, the unused rest, what it was granted) go to the shared bucket.
    give_back: Callable[[LimitSet, tuple[int, ...], tuple[int, ...]], None]
    counter: Callable[[str, str], Counted]  # (scope, outcome) -> the counter's slot
    renew: Callable[[LimitSet], None]  # ask Redis for ``ls``'s next lease in the background (``ask``)
    ttl_s: float = LEASE_TTL_S
    held: dict[str, Lease] = field(default_factory=dict)
    # Sets whose lease request is on its way -> the admissions waiting for its answer (``join``).
    asking: dict[str, list[asyncio.Future[bool]]] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)  # ... and was voided meanwhile
    refused: set[str] = field(default_factory=set)  # sets whose last lease request was not granted
    _timer: asyncio.TimerHandle | None = None

    def take(self, ls: LimitSet, amounts: tuple[int, ...]) -> Verdict | None:
        """Admit from the lease with no round trip; None when there is none or it is short."""
        lease = self.held.get(ls.key)
        if lease is None:
            return None
        now = self.now()
        if lease.ls is not ls or now >= lease.expires:
            if lease.ls is ls and ls.key in self.asking:
                return None  # kept for its renewal's answer: asked while it lived, so Redis still holds it
            self._return(lease)
            return None
        left = lease.left
        for i, amount in enumerate(amounts):
            if left[i] < amount:
                return None
        for i, amount in enumerate(amounts):
            left[i] -= amount
        lease.used = True
        spent = lease.spent
        if spent is None:
            spent = lease.spent = self.counter(ls.scope, "spent")
        spent.inc(1)
        return Verdict(True, "", 0.0, tuple(map(add, lease.shared, left)))

    def ask(self, ls: LimitSet, amounts: tuple[int, ...]) -> LeaseAsk | None:
        """The lease to ask for with this admission: None for none (not leased, one already asked, or the
        lease would not cover one more such request). A live lease asks for what brings it back to its
        size (a renewal of a lease still full asks for nothing more: its life is extended) and tells Redis
        what it has spent since the last ask: spent tokens are no longer held, but for a token bucket's
        room for the refunds of answers still in flight (up to what keeps the lease within twice its size):
        released at once, each of those refunds was a Redis write (``refund``)."""
        size = ls.lease_size
        if not size or ls.key in self.asking:
            return None
        for amount, most in zip(amounts, size):
            if amount > most:
                return None
        self.asking[ls.key] = []
        hold_ms = int(self.ttl_s / self.speed() * 1000) + HOLD_MARGIN_MS
        lease = self.held.get(ls.key)
        if lease is None or lease.ls is not ls:
            return LeaseAsk(size, (0,) * len(size), hold_ms)
        top, release = [], []
        for lim, most, granted, left in zip(ls.limits, size, lease.granted, lease.left):
            spent = max(0, granted - left)
            room = min(spent, max(0, 2 * most - max(left, most))) if lim.tokens else 0
            release.append(spent - room)
            top.append(max(0, most - left))
        lease.granted = [g - r for g, r in zip(lease.granted, release)]
        return LeaseAsk(tuple(top), tuple(release), hold_ms)

    def answered(self, ls: LimitSet, size: tuple[int, ...], verdict: Verdict) -> Verdict:
        """The admission that asked for ``size`` came back; keep the lease if granted. The verdict's levels
        then count the lease as available (what a single process would have said)."""
        self._wake(ls, reached=not verdict.local)
        if not verdict.leased:
            if verdict.ok and not verdict.local:
                self.count(ls.scope, "refused")
            self.refused.add(ls.key)
            self._renewal_failed(ls)
            return verdict
        self.refused.discard(ls.key)
        self.count(ls.scope, "granted")
        if ls.key in self.stale:  # voided while on its way
            self.stale.discard(ls.key)
            self._end(Lease(ls, [0] * len(size), list(size), verdict.levels, 0.0), voided=True)
            return verdict
        lease = self.held.get(ls.key)
        if lease is not None and lease.ls is not ls:
            self._return(lease)
            lease = None
        if lease is None:
            lease = self.held[ls.key] = Lease(ls, list(size), list(size), verdict.levels, 0.0)
        else:
            lease.left = [x + s for x, s in zip(lease.left, size)]
            lease.granted = [x + s for x, s in zip(lease.granted, size)]
            lease.shared = verdict.levels
        now = self.now()
        lease.expires, lease.renew_at, lease.used = now + self.ttl_s, now + RENEW_AT * self.ttl_s, False
        self._arm()
        return replace(verdict, levels=tuple(v + x for v, x in zip(verdict.levels, lease.left)))

    def refund(self, ls: LimitSet, deltas: tuple[int, ...]) -> bool:
        """Keep an answer's unused reservation in the lease instead of sending it to Redis; False when it
        must go there (no live lease, a charge, or the lease would hold more than it was granted)."""
        lease = self.held.get(ls.key)
        if lease is None or lease.ls is not ls or (self.now() >= lease.expires and ls.key not in self.asking):
            return False  # (an expired lease kept for its renewal's answer is still held in Redis)
        left, granted = lease.left, lease.granted
        for i, delta in enumerate(deltas):
            if delta < 0 or left[i] + delta > granted[i]:
                return False
        for i, delta in enumerate(deltas):
            left[i] += delta
        return True

    def failed(self, ls: LimitSet) -> None:
        """The admission that asked for a lease did not come back (cancelled, an error): if Redis granted
        it, its held figure lapses after ``hold_ms``."""
        self._wake(ls, reached=False)
        self.stale.discard(ls.key)
        self._renewal_failed(ls)

    def _renewal_failed(self, ls: LimitSet) -> None:
        """No lease came: a live lease is not renewed again in its lifetime (it is spent, then expires); one
        that expired while its renewal was on its way goes back now."""
        lease = self.held.get(ls.key)
        if lease is None:
            return
        if self.now() >= lease.expires:
            self._return(lease)
        else:
            lease.renew_at = lease.expires
            self._arm()

    def join(self, ls: LimitSet, amounts: tuple[int, ...]) -> asyncio.Future[bool] | None:
        """An admission the lease cannot take while a lease request of its set is on its way: a future
        resolved when that request is answered (then ``take`` again), instead of a round trip of its own;
        its result says whether Redis answered it (False: Redis is away, decide locally rather than wait
        for it a second time). None when none is on its way, the last was refused (near exhaustion: each
        goes to Redis), or a lease would not cover this request."""
        waiters = self.asking.get(ls.key)
        if waiters is None or ls.key in self.refused:
            return None
        for amount, most in zip(amounts, ls.lease_size):
            if amount > most:
                return None
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        self.count(ls.scope, "joined")
        return waiter

    def count(self, scope: str, outcome: str) -> None:
        self.counter(scope, outcome).inc(1)

    def _wake(self, ls: LimitSet, reached: bool) -> None:
        """The lease request of ``ls`` is answered (or failed): the admissions that joined it go on."""
        for waiter in self.asking.pop(ls.key, ()):
            if not waiter.done():
                waiter.set_result(reached)

    def void(self, ls: LimitSet) -> None:
        """Drop ``ls``'s lease without giving its rest back: the provider said the quota is lower (or
        paused). A lease on its way is dropped when it comes (``stale``)."""
        if ls.key in self.asking:
            self.stale.add(ls.key)
        lease = self.held.pop(ls.key, None)
        if lease is not None:
            self._end(lease, voided=True)

    def sweep(self) -> None:
        """Renew the leases spent from since their grant when half their life is over, so a busy set never
        runs out of lease between two grants (each admission went to Redis on its own, or waited, until the
        next came: ~1 round trip more per request at 32 in flight, ``bench/results/2026-12-07-host-state-
        cost-4.md``); give back the rest of those that expired; wake up again for the next."""
        self._timer = None
        now = self.now()
        for lease in [x for x in self.held.values() if x.ls.key not in self.asking]:
            if now >= lease.expires:
                self._return(lease)
            elif now >= lease.renew_at:
                lease.renew_at = lease.expires  # renewed once, or left to expire when nobody spends it
                if lease.used:
                    self.renew(lease.ls)
        self._arm()

    def release_all(self) -> None:
        """Shutdown: give every lease back."""
        for lease in list(self.held.values()):
            self._return(lease)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _return(self, lease: Lease) -> None:
        if self.held.get(lease.ls.key) is lease:
            del self.held[lease.ls.key]
        self._end(lease, voided=False)

    def _end(self, lease: Lease, voided: bool) -> None:
        """The shared state stops counting the lease as held; its rest goes back unless voided."""
        rest = tuple(0 if voided else max(0, x) for x in lease.left)
        self.give_back(lease.ls, rest, tuple(lease.granted))
        self.count(lease.ls.scope, "voided" if voided else "returned")

    def _arm(self) -> None:
        """One timer for the earliest expiry (the loop's clock: real seconds)."""
        if self._timer is not None:
            return
        first = min((x.renew_at for x in self.held.values() if x.ls.key not in self.asking), default=None)
        if first is None:  # none, or only leases whose renewal is on its way (its answer arms the timer)
            return
        delay = max(0.0, first - self.now()) / self.speed() + 0.001
        self._timer = asyncio.get_running_loop().call_later(delay, self.sweep)
