"""Coalescing (single flight): identical requests in flight share one upstream call.

Sits inside the caches (a hit never gets here) and outside rate limiting (a
waiter spends no quota). Requests join a flight by their exact cache key plus
their delivery mode (stream or not, usage chunk or not), so every waiter gets
bytes in its own format. Non-deterministic requests are coalesced only with
``coalesce.nondeterministic: true``: two such requests are allowed different
answers. A client that asked to skip the cache (``no-cache``, ``refresh``,
``bypass``...) is not coalesced either. The mechanics are in
``policies.cache.singleflight``.
"""
from __future__ import annotations

from gateway.appstate import AppState
from gateway.chain import Next
from gateway.config_model import Config
from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.fill import CLAIM_KEY
from policies.cache.request import (
    ANSWER_OPERATIONS,
    KeyMaker,
    cache_blocks,
    cache_config,
    controls_of,
    deterministic,
)
from policies.cache.respond import wants_usage_chunk
from policies.cache.runtime import CacheRuntime, cache_runtime
from policies.cache.singleflight import TakeOver


class Coalesce:
    name = "coalesce"

    def __init__(self, state: AppState, config: Config, rt: CacheRuntime) -> None:
        self.state = state
        self.config = config
        self.rt = rt
        self.keys = KeyMaker(config)
        self._routes = frozenset(r.label for r in config.routes)

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        if ex.request.operation not in ANSWER_OPERATIONS or ex.body is None:
            return await next(ex)
        cfg = cache_config(ex, self.config.cache).coalesce
        if not cfg.enabled or not controls_of(ex).read or \
                (not cfg.nondeterministic and not deterministic(ex)):
            return await next(ex)
        fkey = (self.keys.key(ex), ex.request.stream, wants_usage_chunk(ex), ex.request.upstream_path)
        flights = self.rt.flights
        while True:
            flight = flights.get(fkey)
            leader = flight is None
            if flight is None:
                flight = flights.lead(fkey, ex, next, cfg.max_flight_bytes)
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
            if not leader:
                self._count_follower(ex)
            else:
                self.state.metrics.decision(self.name, "leader")
            return resp

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
