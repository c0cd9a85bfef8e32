"""Coalescing across workers and replicas: a follower elsewhere waits for the leader's cache entry.

Single flight (``singleflight``) shares one upstream call among the requests of one process. Across
processes the exact cache is the meeting point: the process that leads a flight locally first claims the key
in Redis: its claimer's id, ``PX``, at the entry's own key
(``<prefix>cache:exact:<tenant token>:<digest>``), where no entry is yet. The exact cache's lookup already
takes that claim on a miss, in the same round trip (``AnswerStore.get_or_claim``, ``PRE_CLAIM``), so a
cacheable miss pays one round trip for both. If it wins, it calls the provider (the flight then leads with
its chain as given, ``lead_claimed``: no ``call`` around it). The exact cache's write of the entry ends the
claim (the entry replaces it): no write of its own. So when the answer has been relayed (its end as the
leader's single flight tells it, ``Flight.on_body_end``: no body wrapper) the claim's release is held
``HOLD_S`` (``GuardedRedis.hold``) and dropped when the entry's write comes first (the usual case, a few
loop passes later); otherwise (the answer was not stored, or is being assembled off the loop) it turns the
claim, if still this process's, into ``done`` for ``GRACE_S`` (a late entry may still be on its way). A
failed or non-200 answer releases it that way at once (at its head through ``call``; at its body's end, a
small error body read in the same pass, when the lookup's claim led). If another process holds the claim,
this one waits, bounded by ``coalesce.fleet_wait_s`` (<= 10 s), for the entry to appear and answers from it
(``x-gateway-cache: coalesced``); when the claim is gone without an entry (the leader's answer was not
cacheable, or it failed: at most ``HOLD_S`` + ``GRACE_S`` after its end) or the wait runs out, it calls the
provider itself.

Only requests the exact cache would store take part (cache enabled, read and write allowed,
deterministic unless ``deterministic_only: false``). Redis away: each process coalesces locally.
The claim is at the entry's key (tenant token + digest: no prompt text, no secret); an entry's value
starts with ``GWC``, a claim's never. Its value is the claiming process's id (random per process:
replicas in containers share pids). A local leader whose lookup found the claim held by its own process
leads: the holder is a request of this process that became this flight's follower (their lookups'
answers can arrive in either order), or a flight in another delivery mode; waiting would be waiting on
itself. A claim taken by a lookup whose request never reached the coalescing layer (a semantic hit,
an error) is released when that request ends (``release_unused``).
"""
from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.body import Observed
from gateway.chain import Next
from gateway.exchange import Exchange, StateKey, UpstreamResponse
from gateway.state.errors import RedisUnavailable
from gateway.state.pipelining import evalsha_args
from gateway.state.write_behind import Write, evalsha
from policies.cache.config import CacheConfig
from policies.cache.controls import mode_allows
from policies.cache.entry import CachedAnswer
from policies.cache.keys import CacheKey
from policies.cache.redis_store import AnswerStore, Claim
from policies.cache.request import controls_of, deterministic
from policies.cache.respond import cached_response

if TYPE_CHECKING:
    from gateway.state.redis_client import GuardedRedis
    from policies.cache.singleflight import Flight

POLL_S = 0.025
HOLD_S = 0.25  # a relayed answer's claim release waits this long for the entry's write (which ends the claim)
GRACE_S = 1.0  # then the claim outlives it by this much: the entry's write may still be on its way
PRE_CLAIM: StateKey[Claim] = StateKey("cache.fleet_claim")  # taken by the exact cache's lookup
RELEASE_IF_MINE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: the key. ARGV: the claimer, the claim's life in ms. 1 when the claim is (now) the claimer's.
CLAIM_OR_MINE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""
# KEYS: the key. ARGV: the claimer, the grace in ms. A claim still this claimer's is kept the grace as
# ``done`` (the entry's write may still be on its way), then gone; an entry or another's claim is left alone.
RELEASE_TO_GRACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2]) end
return 0
"""


def process_id() -> str:
    """This process's claim value: unique across replicas (containers often share pids)."""
    return f"{os.getpid()}-{secrets.token_hex(6)}"


def fleet_wait_s(ex: Exchange, cfg: CacheConfig) -> float:
    """How long this request's fleet claim lasts; 0 when it takes no part (same gates as the layers:
    coalesced at all, and an answer the exact cache would store, where other processes find it)."""
    controls = controls_of(ex)
    return claim_life(cfg, controls.read, mode_allows(cfg.exact.mode, controls), deterministic(ex))


def claim_life(cfg: CacheConfig, read: bool, allowed: tuple[bool, bool], det: bool) -> float:
    """``fleet_wait_s`` from what the exact cache's layer has worked out already: the client's read control,
    ``mode_allows`` of the exact cache's mode, and whether the request is deterministic."""
    co, exact = cfg.coalesce, cfg.exact
    if not co.enabled or co.fleet_wait_s <= 0 or not exact.enabled or not read:
        return 0.0
    if not (det or co.nondeterministic) or (exact.deterministic_only and not det):
        return 0.0
    return co.fleet_wait_s if allowed == (True, True) else 0.0


def release_unused(backend: GuardedRedis, script: Any, claim: Claim, owner: str) -> bool:
    """Give back a claim the lookup took for a request that never led a flight (deferred, owner-checked)."""
    if not claim.won or claim.used:
        return False
    backend.defer(evalsha(script, [claim.key], [owner]))
    return True


class FleetFlight:
    def __init__(self, backend: GuardedRedis, store: AnswerStore, clock: Callable[[], float],
                 decision: Callable[[str], None], poll_s: float = POLL_S, owner: str | None = None) -> None:
        self.backend, self.store, self.clock = backend, store, clock
        self.decision, self.poll_s = decision, poll_s
        self.owner = owner or process_id()
        self._mine = self.owner.encode()
        self._release = backend.script(RELEASE_TO_GRACE)
        self._claim = backend.script(CLAIM_OR_MINE)
        self._release_of = self.release  # one bound method, held with every leader's claim

    def lead_claimed(self, pre: Claim, key: CacheKey, flight: Flight) -> bool:
        """The lookup's claim, when it makes this process the leader (taken by the lookup, or held by this
        process: see the module's docstring): ``flight`` leads with the chain it was given, with no ``call``
        frame around the provider's call (``bench/results/2026-12-07-host-state-cost-3.md``), and its body's
        end releases the claim as ``call``'s would; a non-200 answer's at its body's end (``call`` releases
        it at its head). False: ``call`` decides."""
        if not (pre.won or pre.holder == self._mine) or not (pre.of is key or pre.of == key):
            return False
        pre.used = True
        self.decision("fleet_leader")
        flight.on_body_end = _ReleaseAtEnd(self, pre.key, flight)
        return True

    async def call(self, ex: Exchange, next: Next, key: CacheKey, wait_s: float,
                   flight: Flight | None = None) -> UpstreamResponse:
        """Lead (call the provider, then release the claim) or follow (answer from the leader's entry).
        ``flight``: the local flight this call leads, which tells of its body's end (else a body wrapper)."""
        pre = ex.state.get(PRE_CLAIM)
        if pre is not None and (pre.of is key or pre.of == key):  # the same object: made once per request
            pre.used, claim = True, pre.key
            won = pre.won or pre.holder == self._mine  # held by this process: see the module's docstring
        else:  # the lookup took no claim (it failed): claim now; a claim already this process's is won (a
            # lookup that timed out may have taken it: waiting on it would be waiting on itself for wait_s)
            claim = self.store.claim_key(key)
            try:
                won = await self.backend.execute(*evalsha_args(
                    self._claim, [claim], [self.owner, int(wait_s * 1000)]), script=self._claim) == 1
            except RedisUnavailable:
                return await next(ex)
        if won:
            self.decision("fleet_leader")
            return self._release_at_end(await next(ex), claim, flight)
        answer = await self._wait(key, wait_s)
        if answer is None:
            self.decision("fleet_gave_up")
            return await next(ex)
        self.decision("fleet_follower")
        return cached_response(ex, answer, "coalesced", self.clock)

    async def _wait(self, key: CacheKey, wait_s: float) -> CachedAnswer | None:
        deadline = self.clock() + wait_s
        while self.clock() < deadline:
            answer, held = await self.store.peek(key)  # the entry, or its claim (one read: the same key)
            if answer is not None:
                return answer
            if not held:
                return None  # released and its grace over (the answer was not stored), or Redis away
            await asyncio.sleep(self.poll_s)  # no notification to wait on: a short, bounded poll
        return None

    def _release_at_end(self, resp: UpstreamResponse, claim: str, flight: Flight | None) -> UpstreamResponse:
        """Release the claim once the answer is relayed. The exact cache writes the entry just after, which
        ends the claim: the release is held until then (``HOLD_S``) and dropped by that write; a request
        arriving in between waits for the entry, it does not call the provider again. Only a 200 is stored:
        another answer releases it at once. The body's end is the flight's to tell (``Flight.on_body_end``):
        a wrapper's frame and ``StopAsyncIteration`` per request less (~21k instructions,
        ``bench/results/2026-12-07-host-state-cost-2.md``)."""
        if resp.status != 200:
            self.backend.defer(self.release(claim))
            return resp
        end = _ReleaseAtEnd(self, claim)
        if flight is not None:
            flight.on_body_end = end
        else:  # a caller outside single flight
            resp.body = Observed(resp.body, on_end=end)
        return resp

    def release(self, claim: str) -> Write:
        """The claim's release: ``done`` for ``GRACE_S`` if still this process's; an entry is left alone."""
        return evalsha(self._release, [claim], [self.owner, int(GRACE_S * 1000)])


class _ReleaseAtEnd:
    """A leader's answer ended: at its clean end the release is held for the entry's write (made only if no
    entry comes first), after a failure (or when ``flight``'s answer was not a 200: never stored) it is sent
    at once. A slotted object, not a closure."""

    __slots__ = ("claim", "fleet", "flight")

    def __init__(self, fleet: FleetFlight, claim: str, flight: Flight | None = None) -> None:
        self.fleet, self.claim, self.flight = fleet, claim, flight

    def __call__(self, error: BaseException | None) -> None:
        fleet = self.fleet
        if error is None and (self.flight is None or self.flight.status == 200):
            fleet.backend.hold(self.claim, HOLD_S, fleet._release_of)  # noqa: SLF001 - its own helper
        else:
            fleet.backend.defer(fleet.release(self.claim))
