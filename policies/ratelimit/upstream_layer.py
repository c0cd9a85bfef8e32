"""Upstream rate limit: never send a provider a request it would answer with 429.

Position: innermost, after retry and the circuit breaker, so every attempt
(retries, fallbacks to another upstream) is admitted against the upstream it
really goes to. Limits are ``upstreams.<name>.rate_limit`` (``rpm``, ``tpm``,
``max_concurrency``) applied at ``headroom`` x the provider's quota.

When the bucket is short the request queues (bounded FIFO, ``x-gateway-priority:
high|normal|low``) until it fits, until ``max_queue_wait_s`` or until its own
deadline, whichever comes first; only then it gets 429 with ``Retry-After``.
The time queued is a deliberate wait (``ex.record.waited_s``), not gateway overhead.
Every answer's ``x-ratelimit-*`` headers and 429s teach the buckets the
provider's real quota (``policies.ratelimit.quota_learning``). ``enforce:
false`` never queues or refuses: it counts what it would have done.
"""
from __future__ import annotations

from gateway.appstate import AppState
from gateway.chain import Next
from gateway.config_model import Config
from gateway.errors import LocalReply
from gateway.exchange import Exchange, UpstreamResponse
from policies.ratelimit.config import RateLimitConfig
from policies.ratelimit.headers import retry_after_value
from policies.ratelimit.model import COOLDOWN, LimitSet, Verdict, check_rate_limit, upstream_limits
from policies.ratelimit.queue import PRIORITY_RANK, Admission, Rejected
from policies.ratelimit.runtime import RateLimiter, limiter_for
from policies.ratelimit.settle import COUNTED, estimate, settling

PRIORITY_HEADER = "x-gateway-priority"


class UpstreamRateLimit:
    name = "rate_limit_upstream"
    counts_prompts = True  # reads every request's prompt size: see Runtime.counts_prompts

    def __init__(self, st: AppState, limiter: RateLimiter,
                 sets: dict[str, tuple[LimitSet, RateLimitConfig]]) -> None:
        self.st = st
        self.limiter = limiter
        self.sets = sets

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        entry = self.sets.get(ex.target.upstream)
        if entry is None:
            return await next(ex)
        ls, cfg = entry
        prompt, tokens = (0, 0)
        if ls.counts_tokens:
            prompt, tokens = estimate(self.st, ex, cfg.default_output_tokens)
        amounts = ls.amounts(tokens)
        member = self.limiter.member()
        if cfg.enforce:
            verdict = await self._admit(ex, ls, cfg, amounts, member)
        else:
            verdict = await self.limiter.acquire(ls, amounts, member)
            if not verdict.ok:
                self._decided(ls, verdict.failed, "shadow_rejected")
                return await next(ex)
            self._allowed(ls, "allowed")
        counted = tokens > 0 and COUNTED not in ex.state
        if counted:
            ex.state.set(COUNTED, True)
        grant = self.limiter.grant(ls, verdict, amounts, member, tokens, prompt, counted)
        grant.seq = self.limiter.pending_of(ls).add(tokens)
        try:
            resp = await next(ex)
        except BaseException:
            self.limiter.settle(grant, 0)
            raise
        self.limiter.observe(grant, resp.status, resp.headers)
        body = settling(resp.body, ex, self.limiter, grant, resp.status, resp.is_sse)
        return UpstreamResponse(resp.status, resp.headers, body, resp.source, resp.upstream)

    async def _admit(self, ex: Exchange, ls: LimitSet, cfg: RateLimitConfig, amounts: tuple[int, ...],
                     member: str) -> Verdict:
        """Queue until the request fits; 429 when it cannot in time."""
        queue = self.limiter.queue(ls.label, cfg.max_queue)
        now = self.limiter.loop_time()
        give_up_at = min(now + cfg.max_queue_wait_s, ex.request.deadline)
        rank = PRIORITY_RANK.get(ex.request.headers.get(PRIORITY_HEADER, "normal").strip().lower(), 1)
        try:
            admission: Admission = await queue.admit(lambda: self.limiter.acquire(ls, amounts, member),
                                                     give_up_at, rank)
        except Rejected as rejected:
            self._waited(ex, ls, rejected.waited_s)
            failed = rejected.verdict.failed if rejected.verdict is not None else queue.last_blocked
            self._decided(ls, failed, "rejected")
            raise _rejected(ls, cfg, rejected, amounts) from None
        self._waited(ex, ls, admission.waited_s)
        if admission.waited_s > 0 or admission.blocked:
            self.limiter.metrics.decide("upstream", admission.blocked, "queued")
            self._allowed(ls, "queued")
        else:
            self._allowed(ls, "allowed")
        return admission.verdict

    def _waited(self, ex: Exchange, ls: LimitSet, waited_s: float) -> None:
        ex.record.waited_s += waited_s
        self.limiter.metrics.wait.slot(ls.label).observe(waited_s)  # every admitted request: the fast slot

    def _decided(self, ls: LimitSet, limit: str, decision: str) -> None:
        self.limiter.metrics.decide("upstream", limit, decision)
        self.limiter.metrics.policy(self.name, decision)

    def _allowed(self, ls: LimitSet, decision: str) -> None:
        self.limiter.metrics.allowed("upstream", ls.names)
        self.limiter.metrics.policy(self.name, decision)


def _rejected(ls: LimitSet, cfg: RateLimitConfig, rejected: Rejected, amounts: tuple[int, ...]) -> LocalReply:
    wait = rejected.retry_after_s
    headers = {"retry-after": retry_after_value(wait)}
    if rejected.reason == "too_large" and rejected.verdict is not None:
        lim = ls.find(rejected.verdict.failed) or ls.limits[0]
        amount = amounts[ls.limits.index(lim)]
        message = (f"Request too large for upstream {ls.label}'s {lim.name} limit: limit {int(lim.capacity)} "
                   f"(at headroom {cfg.headroom:g}), requested {amount}.")
        return LocalReply(429, message, type="tokens", code="rate_limit_exceeded", headers=headers)
    headers["retry-after-ms"] = str(max(1, int(wait * 1000)))
    if rejected.reason == "queue_full":
        message = f"Upstream {ls.label} is at its rate limit and its queue is full ({cfg.max_queue} waiting)."
    else:
        paused = rejected.verdict is not None and rejected.verdict.failed == COOLDOWN
        why = "is paused by its provider" if paused else "is at its rate limit"
        message = (f"Upstream {ls.label} {why}; waited {rejected.waited_s:.2f}s in the gateway queue. "
                   f"Please try again in {wait:.3g}s.")
    return LocalReply(429, message, type="requests", code="rate_limit_exceeded", headers=headers)


async def factory(state: AppState, config: Config) -> UpstreamRateLimit | None:
    """On when some upstream has a ``rate_limit`` block with at least one limit."""
    sets: dict[str, tuple[LimitSet, RateLimitConfig]] = {}
    problems: list[str] = []
    for name, up in config.upstreams.items():
        if up.rate_limit is None:
            continue
        problems += check_rate_limit(f"upstreams.{name}.rate_limit", up.rate_limit)
        ls = upstream_limits(name, up.rate_limit, up.timeouts.total_s + 60)
        if ls is not None:
            sets[name] = (ls, up.rate_limit)
    if problems:
        raise ValueError("; ".join(problems))
    if not sets:
        return None
    limiter = limiter_for(state)
    share = limiter.worker_share
    return UpstreamRateLimit(state, limiter, {n: (ls.scaled(share), c) for n, (ls, c) in sets.items()})
