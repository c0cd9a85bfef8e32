"""Client rate limit: each client key stays within its own share, refused at once when over.

Position: after the caches and coalescing (a cache hit spends no quota), before
compression and retry (one client request is one admission, however many
attempts it takes upstream). Limits come from ``auth.keys[]`` (``rpm``,
``tpm``, ``max_concurrency``, ``daily_tokens``); a key without limits, or
passthrough mode, skips this layer at the cost of one dict lookup.

A client over its limit gets 429 at once, never a queue: the client is the one
that must slow down, and its SDK reads ``Retry-After`` and the OpenAI-style
``x-ratelimit-*`` headers, which every admitted answer carries too. The
reservation (prompt + output limit) is reconciled with the real usage when the
answer ends, and a concurrency slot is held until then. ``enforce: false`` on
a key counts what would have been refused and lets it through.
"""
from __future__ import annotations

from gateway.appstate import AppState
from gateway.chain import Next
from gateway.config_model import Config
from gateway.errors import LocalReply
from gateway.exchange import Exchange, UpstreamResponse
from policies.ratelimit.headers import client_headers, retry_after_value
from policies.ratelimit.model import NEVER, LimitSet, Verdict, check_key_limits, client_limits
from policies.ratelimit.runtime import RateLimiter, limiter_for
from policies.ratelimit.settle import COUNTED, estimate, settling

DEFAULT_OUTPUT_TOKENS = 1024


class ClientRateLimit:
    name = "rate_limit_client"
    counts_prompts = True  # reads every request's prompt size: see Runtime.counts_prompts

    def __init__(self, st: AppState, limiter: RateLimiter, config: Config) -> None:
        self.st = st
        self.limiter = limiter
        self.lease_s = max([u.timeouts.total_s for u in config.upstreams.values()]
                           + [r.timeouts.total_s for r in config.routes if r.timeouts] + [0.0]) + 60
        self.default_output = {
            name: (u.rate_limit.default_output_tokens if u.rate_limit else DEFAULT_OUTPUT_TOKENS)
            for name, u in config.upstreams.items()
        }
        self._sets: dict[str, LimitSet | None] = {}  # by key digest; bounded by the configured keys

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        identity = ex.request.identity
        key = identity.key
        if key is None:
            return await next(ex)
        if identity.key_hash in self._sets:
            ls = self._sets[identity.key_hash]
        else:
            ls = client_limits(key, identity.key_hash, self.lease_s)
            self._sets[identity.key_hash] = ls = ls.scaled(self.limiter.worker_share) if ls else None
        if ls is None:
            return await next(ex)
        prompt, tokens = (0, 0)
        if ls.counts_tokens:
            prompt, tokens = estimate(self.st, ex,
                                      self.default_output.get(ex.target.upstream, DEFAULT_OUTPUT_TOKENS))
        amounts = ls.amounts(tokens)
        member = self.limiter.member()
        verdict = await self.limiter.acquire(ls, amounts, member)
        speed = self.limiter.clock.speed
        if not verdict.ok:
            decision = "rejected" if key.enforce else "shadow_rejected"
            self.limiter.metrics.decide("client", verdict.failed, decision)
            self.limiter.metrics.policy(self.name, decision)
            if key.enforce:
                raise _too_many(ls, verdict, amounts, speed)
            return await next(ex)
        self.limiter.metrics.allowed("client", ls.names)
        self.limiter.metrics.policy(self.name, "allowed")
        counted = tokens > 0 and COUNTED not in ex.state
        if counted:
            ex.state.set(COUNTED, True)
        grant = self.limiter.grant(ls, verdict, amounts, member, tokens, prompt, counted)
        ex.response_headers.update(client_headers(ls, verdict, speed))
        try:
            resp = await next(ex)
        except BaseException:
            self.limiter.settle(grant, 0)  # nothing was produced (our own 429, an upstream failure, a cancel)
            raise
        body = settling(resp.body, ex, self.limiter, grant, resp.status, resp.is_sse)
        return UpstreamResponse(resp.status, resp.headers, body, resp.source, resp.upstream)


def _too_many(ls: LimitSet, verdict: Verdict, amounts: tuple[int, ...], speed: float) -> LocalReply:
    """429 in OpenAI's shape, with ``Retry-After`` and the key's ``x-ratelimit-*`` headers."""
    index = next((i for i, lim in enumerate(ls.limits) if lim.name == verdict.failed), 0)
    lim = ls.limits[index]
    kind = "tokens" if lim.tokens else "requests"
    headers = client_headers(ls, verdict, speed)
    headers["retry-after"] = retry_after_value(verdict.wait_s if verdict.wait_s > 0 else 1.0)
    if verdict.wait_s not in (0.0, NEVER):
        headers["retry-after-ms"] = str(max(1, int(verdict.wait_s * 1000)))
    level = max(0, int(verdict.levels[index])) if index < len(verdict.levels) else 0
    if verdict.wait_s == NEVER:
        message = (f"Request too large for {lim.name} of tenant {ls.label}: limit {int(lim.capacity)}, "
                   f"requested {amounts[index]}.")
    else:
        when = f" Please try again in {verdict.wait_s:.3g}s." if verdict.wait_s > 0 else ""
        message = (
            f"Rate limit reached for {kind} ({lim.name}) of tenant {ls.label}: limit {int(lim.capacity)}, "
            f"remaining {level}, requested {amounts[index]}.{when}"
        )
    return LocalReply(429, message, type=kind, code="rate_limit_exceeded", headers=headers)


async def factory(state: AppState, config: Config) -> ClientRateLimit | None:
    """On when some client key has limits (``auth.mode: keys``)."""
    if config.auth.mode != "keys" or not any(
            k.rpm or k.tpm or k.max_concurrency or k.daily_tokens for k in config.auth.keys):
        return None
    problems = check_key_limits("auth.keys", config.auth.keys)
    if problems:
        raise ValueError("; ".join(problems))
    return ClientRateLimit(state, limiter_for(state), config)
