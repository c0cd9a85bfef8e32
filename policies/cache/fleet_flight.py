"""Coalescing across workers and replicas: a follower elsewhere waits for the leader's cache entry.

Single flight (``singleflight``) shares one upstream call among the requests of one process. Across
processes the exact cache is the meeting point: the process that leads a flight locally first claims
the key in Redis (``SET <prefix>flight:exact:<tenant token>:<digest> NX PX``). If it wins, it calls
the provider; when the answer has been relayed the claim is kept ``GRACE_S`` more (the exact cache
writes the entry just after). If another process holds the claim, this one waits, bounded by
``coalesce.fleet_wait_s`` (<= 10 s), for the entry to appear and answers from it
(``x-gateway-cache: coalesced``); when the claim is gone without an entry (the leader's answer was
not cacheable, or it failed: at most ``GRACE_S`` after its end) or the wait runs out, it calls the
provider itself.

Only requests the exact cache would store take part (cache enabled, read and write allowed,
deterministic unless ``deterministic_only: false``). Redis away: each process coalesces locally.
The claim key names the entry the way its cache key does (tenant token + digest: no prompt text, no
secret), outside the ``cache:`` keyspace.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from gateway.body import Observed
from gateway.chain import Next
from gateway.exchange import Exchange, UpstreamResponse
from gateway.state.redis_client import GuardedRedis, RedisUnavailable
from gateway.state.write_behind import Write
from policies.cache.entry import CachedAnswer
from policies.cache.keys import CacheKey, namespace_token
from policies.cache.redis_store import AnswerStore
from policies.cache.respond import cached_response

POLL_S = 0.025
GRACE_S = 1.0  # the claim outlives the answer by this much: the entry's write may still be on its way


class FleetFlight:
    def __init__(self, backend: GuardedRedis, store: AnswerStore, clock: Callable[[], float],
                 decision: Callable[[str], None], poll_s: float = POLL_S) -> None:
        self.backend, self.store, self.clock = backend, store, clock
        self.decision, self.poll_s = decision, poll_s
        self.owner = f"{os.getpid()}"

    async def call(self, ex: Exchange, next: Next, key: CacheKey, wait_s: float) -> UpstreamResponse:
        """Lead (call the provider, then release the claim) or follow (answer from the leader's entry)."""
        claim = f"{self.store.prefix}flight:{self.store.kind}:{namespace_token(key.namespace)}:{key.digest}"
        try:
            won = await self.backend.call(lambda r: r.set(claim, self.owner, nx=True, px=int(wait_s * 1000)))
        except RedisUnavailable:
            return await next(ex)
        if won:
            self.decision("fleet_leader")
            return self._release_at_end(await next(ex), claim)
        answer = await self._wait(key, claim, wait_s)
        if answer is None:
            self.decision("fleet_gave_up")
            return await next(ex)
        self.decision("fleet_follower")
        return cached_response(ex, answer, "coalesced", self.clock)

    async def _wait(self, key: CacheKey, claim: str, wait_s: float) -> CachedAnswer | None:
        deadline = self.clock() + wait_s
        while self.clock() < deadline:
            answer = await self.store.get(key)
            if answer is not None:
                return answer
            try:
                if not await self.backend.call(lambda r: r.exists(claim)):
                    return None  # released and its grace over: the answer was not stored
            except RedisUnavailable:
                return None
            await asyncio.sleep(self.poll_s)  # no notification to wait on: a short, bounded poll
        return None

    def _release_at_end(self, resp: UpstreamResponse, claim: str) -> UpstreamResponse:
        """Keep the claim for a short grace: the exact cache writes the entry just after the relay, and a
        request arriving in between must wait for it, not call the provider again. A deferred write: it
        shares a round trip with the answer's other end-of-answer writes (the entry's among them)."""
        def on_end(error: BaseException | None) -> None:
            self.backend.defer(Write(("SET", claim, "done", "PX", int(GRACE_S * 1000), "XX")))

        resp.body = Observed(resp.body, on_end=on_end)
        return resp
