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
lease topped up while one bucket ran short is trimmed to twice its size) for at most its lifetime
(``ttl_s``) since its last grant: then its unused rest goes back to the shared bucket (an ``APPLY``
operation on the deferred path; dropped if Redis is down, like the lease of a process that dies: what
it held stops counting as held ``HOLD_MARGIN_MS`` after its expiry). An answer's unused reservation
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

from policies.ratelimit.model import LimitSet, Verdict

LEASE_TTL_S = 1.0  # limiter seconds a lease lives after its last grant
HOLD_MARGIN_MS = 1000  # Redis counts a lease as held this long past its expiry (the give-back, a slow loop)
OUTCOMES = ("granted", "refused", "spent", "returned", "voided")


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


@dataclass(slots=True)
class Leases:
    """This process's leases, one per limit set at most."""

    now: Callable[[], float]  # the limiter clock
    speed: Callable[[], float]  # limiter seconds per real second (timers run on the loop's clock)
    # A lease ends: (its set, the unused rest, what it was granted) go to the shared bucket.
    give_back: Callable[[LimitSet, tuple[int, ...], tuple[int, ...]], None]
    count: Callable[[str, str], None]  # (scope, outcome)
    ttl_s: float = LEASE_TTL_S
    held: dict[str, Lease] = field(default_factory=dict)
    asking: set[str] = field(default_factory=set)  # sets whose lease request is on its way
    stale: set[str] = field(default_factory=set)  # ... and was voided meanwhile
    _timer: asyncio.TimerHandle | None = None

    def take(self, ls: LimitSet, amounts: tuple[int, ...]) -> Verdict | None:
        """Admit from the lease with no round trip; None when there is none or it is short."""
        lease = self.held.get(ls.key)
        if lease is None:
            return None
        if lease.ls is not ls or self.now() >= lease.expires:
            self._return(lease)
            return None
        left = lease.left
        for i, amount in enumerate(amounts):
            if left[i] < amount:
                return None
        for i, amount in enumerate(amounts):
            left[i] -= amount
        self.count(ls.scope, "spent")
        return Verdict(True, "", 0.0, tuple(s + x for s, x in zip(lease.shared, left)))

    def ask(self, ls: LimitSet, amounts: tuple[int, ...]) -> LeaseAsk | None:
        """The lease to ask for with this admission: None for none (not leased, one already asked, or the
        lease would not cover one more such request). It tells Redis what the live lease has spent since
        the last ask: spent tokens are no longer held."""
        size = ls.lease_size
        if not size or ls.key in self.asking:
            return None
        for amount, most in zip(amounts, size):
            if amount > most:
                return None
        self.asking.add(ls.key)
        lease = self.held.get(ls.key)
        release = (0,) * len(size)
        if lease is not None and lease.ls is ls:
            release = tuple(max(0, g - x) for g, x in zip(lease.granted, lease.left))
            lease.granted = [g - r for g, r in zip(lease.granted, release)]
        return LeaseAsk(size, release, int(self.ttl_s / self.speed() * 1000) + HOLD_MARGIN_MS)

    def answered(self, ls: LimitSet, size: tuple[int, ...], verdict: Verdict) -> Verdict:
        """The admission that asked for ``size`` came back; keep the lease if granted. The verdict's levels
        then count the lease as available (what a single process would have said)."""
        self.asking.discard(ls.key)
        if not verdict.leased:
            if verdict.ok and not verdict.local:
                self.count(ls.scope, "refused")
            return verdict
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
            self._trim(lease)
        lease.expires = self.now() + self.ttl_s
        self._arm()
        return replace(verdict, levels=tuple(v + x for v, x in zip(verdict.levels, lease.left)))

    def refund(self, ls: LimitSet, deltas: tuple[int, ...]) -> bool:
        """Keep an answer's unused reservation in the lease instead of sending it to Redis; False when it
        must go there (no live lease, a charge, or the lease would hold more than it was granted)."""
        lease = self.held.get(ls.key)
        if lease is None or lease.ls is not ls or self.now() >= lease.expires:
            return False
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
        self.asking.discard(ls.key)
        self.stale.discard(ls.key)

    def void(self, ls: LimitSet) -> None:
        """Drop ``ls``'s lease without giving its rest back: the provider said the quota is lower (or
        paused). A lease on its way is dropped when it comes (``stale``)."""
        if ls.key in self.asking:
            self.stale.add(ls.key)
        lease = self.held.pop(ls.key, None)
        if lease is not None:
            self._end(lease, voided=True)

    def sweep(self) -> None:
        """Give back the remainders of the leases that have expired; wake up again for the next one."""
        self._timer = None
        now = self.now()
        for lease in [x for x in self.held.values() if now >= x.expires]:
            self._return(lease)
        self._arm()

    def release_all(self) -> None:
        """Shutdown: give every lease back."""
        for lease in list(self.held.values()):
            self._return(lease)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _trim(self, lease: Lease) -> None:
        """A lease holds at most twice its size per limit (one limit may run short while another is not
        spent): the excess goes back at once."""
        size = lease.ls.lease_size
        excess = tuple(max(0, x - 2 * s) for x, s in zip(lease.left, size))
        if any(excess):
            lease.left = [x - e for x, e in zip(lease.left, excess)]
            lease.granted = [x - e for x, e in zip(lease.granted, excess)]
            self.give_back(lease.ls, excess, excess)
            self.count(lease.ls.scope, "returned")

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
        if self._timer is not None or not self.held:
            return
        first = min(x.expires for x in self.held.values())
        delay = max(0.0, first - self.now()) / self.speed() + 0.001
        self._timer = asyncio.get_running_loop().call_later(delay, self.sweep)
