"""Coalescing (single flight): identical requests in flight share one upstream call.

Sits inside the caches (a hit never gets here) and outside rate limiting (a
waiter spends no quota). Requests join a flight by their exact cache key plus
their delivery mode (stream or not, usage chunk or not), so every waiter gets
bytes in its own format. Non-deterministic requests are coalesced only with
``coalesce.nondeterministic: true``: two such requests are allowed different
answers. A client that asked to skip the cache (``no-cache``, ``refresh``,
``bypass``...) is not coalesced either. The mechanics are in
``policies.cache.singleflight``; across workers and replicas (a shared state backend), the local
leader first claims the key fleet-wide (``policies.cache.fleet_flight``).
"""
from __future__ import annotations

from collections.abc import Hashable
from functools import partial

from gateway.appstate import AppState
from gateway.chain import Next
from gateway.config_model import Config
from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.fill import CLAIM_KEY
from policies.cache.fleet_flight import PRE_CLAIM, FleetFlight, fleet_wait_s
from policies.cache.keys import CacheKey
from policies.cache.redis_store import Claim
from policies.cache.request import (
    ANSWER_OPERATIONS,
    KEY_ATTR,
    KeyMaker,
    cache_blocks,
    cache_config,
    controls_of,
    deterministic,
)
from policies.cache.respond import wants_usage_chunk
from policies.cache.runtime import CacheRuntime, cache_runtime
from policies.cache.singleflight import Flight, TakeOver


class Coalesce:
    name = "coalesce"
    operations = ANSWER_OPERATIONS  # the other operations' chains leave it out (gateway.chain)

    def __init__(self, state: AppState, config: Config, rt: CacheRuntime) -> None:
        self.state = state
        self.config = config
        self.rt = rt
        self.keys = KeyMaker(config)
        self._routes = frozenset(r.label for r in config.routes)
        self.fleet = None if state.backend is None else FleetFlight(
            state.backend, rt.exact, state.clock, partial(state.metrics.decision, self.name),
            owner=rt.fleet_owner)

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        if ex.request.operation not in ANSWER_OPERATIONS or ex.body is None:
            return await next(ex)
        cfg = cache_config(ex, self.config.cache).coalesce
        if not cfg.enabled or not controls_of(ex).read or \
                (not cfg.nondeterministic and not deterministic(ex)):
            return await next(ex)
        key = ex.state.get(KEY_ATTR)  # made by the exact layer (else here: in a thread for a large body)
        if key is None:
            keys = self.keys
            key = keys.key(ex) if keys.inline(ex) else await keys.key_off_loop(ex)
        # The key's two strings, not the ``CacheKey``: a frozen dataclass hashes in Python (a call per dict
        # operation, four per flight); strings keep their hash. The same flights: the digest covers them all.
        fkey = (key.namespace, key.digest, ex.request.stream, wants_usage_chunk(ex), ex.request.upstream_path)
        pre = ex.state.get(PRE_CLAIM)
        if pre is not None:  # a claim the lookup took: the flight's leader releases it (or this request)
            pre.used = True
        flights = self.rt.flights
        while True:
            flight = flights.get(fkey)
            leader = flight is None
            if flight is None:
                flight = self._lead(ex, next, fkey, cfg.max_flight_bytes, key, pre)
            elif flight.subscribers >= cfg.max_waiters:
                self.state.metrics.decision(self.name, "too_many_waiters")
                return await next(ex)
            else:
                flight.join()
            try:
                resp = await flight.wait(leader)
            except TakeOver:
                flight.leave()
                self.state.metrics.decision(self.name, "take_over")
                continue
            except BaseException:
                flight.leave()
                raise
            ex.state.set(CLAIM_KEY, flight.claim_store)
            if not leader or ex.record.cache_result == "coalesced":  # followed here, or another process
                self._count_follower(ex)
            else:
                self.state.metrics.decision(self.name, "leader")
            return resp

    def _lead(self, ex: Exchange, next: Next, fkey: Hashable, max_bytes: int, key: CacheKey,
              pre: Claim | None) -> Flight:
        """A new flight led by ``ex``, with its fleet claim set up when there is shared state. A set-up that
        raises abandons the flight: registered with a leader that never calls, it would keep every later
        identical request waiting."""
        flight = self.rt.flights.lead(fkey, ex, next, max_bytes)
        if self.fleet is not None:
            try:
                if pre is None or not self.fleet.lead_claimed(pre, key, flight):
                    self._lead_fleet(ex, next, flight, key, pre)
            except BaseException as exc:
                flight.abandon(exc)
                raise
        return flight

    def _lead_fleet(self, ex: Exchange, next: Next, flight: Flight, key: CacheKey, pre: Claim | None) -> None:
        """The fleet claim around the local leader's call (``flight.lead_with``) when the exact cache would
        store this answer (the entry is where other processes pick it up); otherwise the leader calls the
        chain as ``Flights.lead`` was given it. Not called for one process (no shared state: nothing to
        claim), nor when the exact cache's lookup took a claim that makes this process the leader: that flight
        needs no ``call`` around its chain (``FleetFlight.lead_claimed``, in the layer's frame)."""
        if self.fleet is None:
            return
        cfg = self.config.cache  # the exact cache's lookup worked the claim's life out already
        wait_s = pre.life_ms / 1000 if pre is not None else fleet_wait_s(ex, cache_config(ex, cfg))
        if wait_s > 0:
            flight.lead_with(ex, partial(self.fleet.call, next=next, key=key, wait_s=wait_s,
                                         flight=flight))

    def _count_follower(self, ex: Exchange) -> None:
        ex.record.cache_result = ex.response_headers["x-gateway-cache"] = "coalesced"
        ex.record.source = "cache"
        self.state.metrics.decision(self.name, "coalesced")
        route = ex.request.route_name if ex.request.route_name in self._routes else "other"
        self.rt.metrics.coalesced.labels(route).inc()


async def factory(state: AppState, config: Config) -> Coalesce | None:
    """Built when single flight is on in the global cache block or in a route's own."""
    if not any(b.coalesce.enabled for b in cache_blocks(config)):
        return None
    return Coalesce(state, config, cache_runtime(state, config))
