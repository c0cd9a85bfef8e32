"""One target's attempts: the call, the commit point, and retries on the same target.

``TargetAttempts.on_target`` calls the inner layers (circuit breaker -> upstream rate limit ->
upstream) up to ``max_attempts`` times. An attempt fails on a connect/reset/timeout failure, a
408/429/5xx, or a stream whose first event is an error; it is retried when its reason is in
``retry_on`` (4xx other than 408/429 never are), attempts remain, the retry budget allows, the
breaker is not open and the wait fits the total deadline. A ``Retry-After`` (or ``retry-after-ms``,
``x-ratelimit-reset-*`` on a 429) that does not fit ``min(max_retry_after_s, remaining deadline)`` is
not waited for: the answer goes back at once with its headers (or to the next target).
A failure that says "slow or silent" (``MOVE_ON``) with a later target in the plan, and a provider
400 ``context_length_exceeded``, are handed back at once: ``retry_layer`` decides where they go.

THE COMMIT POINT: a 2xx answer is not returned until its first meaningful event
(``policies/resilience/commit.py``) has been read, within the attempt's first-byte timeout. Until
then a stall, a reset or an error event is still retryable.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.body import Observed
from gateway.chain import Next
from gateway.errors import UpstreamFailure
from gateway.exchange import Exchange, UpstreamResponse
from gateway.retry_after import retry_after_s
from policies.resilience.backoff import backoff_delay
from policies.resilience.breaker import CircuitOpen, Ticket
from policies.resilience.breaker_layer import take_ticket
from policies.resilience.commit import Replay, close_body, peek
from policies.resilience.config import RetryConfig
from policies.resilience.context_window import read_error
from policies.resilience.hedge import adaptive, route_hedge
from policies.resilience.registry import Resilience
from policies.resilience.retry_budget import RetryBudget
from policies.resilience.targets import Plan, Target
from policies.resilience.validate import RETRYABLE_4XX

Planner = Callable[[Exchange], Plan]
Sleep = Callable[[float], Awaitable[object]]
CONTEXT_EXCEEDED = "context_length_exceeded"  # a provider 400: the prompt does not fit this model
# Failures that say "this upstream is slow or silent", not "try again": with a later target in the
# plan they move on to it at once instead of waiting out the same timeout again on the same upstream.
MOVE_ON = frozenset({"timeout_before_first_byte", "connect_timeout", "idle_timeout"})
# Seen from the client, a failure before the commit point is always "before the response".
_PRECOMMIT_KIND = {"reset_mid_stream": "reset_before_response", "idle_timeout": "timeout_before_first_byte",
                   "connect_timeout": "connect_error"}


@dataclass(slots=True)
class Run:
    attempts: int = 0  # calls that reached an upstream (breaker rejections are not attempts)
    failovers: int = 0
    context_switched: bool = False  # the plan was replaced by the route's context_fallbacks
    # A balanced target counted in flight when it was picked, before its attempt's task started
    # (a hedged primary runs in a task of its own): its first attempt does not count it again.
    reserved: str | None = None


@dataclass(slots=True)
class Failed:
    """A failed attempt: an exception to raise, or a response to hand back if nothing better comes."""

    reason: str  # a retry_on name: failure kind, status code, "error_event", or "circuit_open"
    error: Exception | None = None
    response: UpstreamResponse | None = None
    retry_after: float | None = None

    async def discard(self) -> None:
        if self.response is not None:
            await close_body(self.response.body)
            self.response = None


class TargetAttempts:
    """The attempts on one target of a plan (and the retry decisions between them)."""

    def __init__(self, *, res: Resilience, clock: Callable[[], float], sleep: Sleep,
                 rand: Callable[[], float], context_planner: Planner | None) -> None:
        self.res = res
        self.metrics = res.metrics
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        self.context_planner = context_planner
        self._retry_on: dict[int, frozenset[str]] = {}

    async def on_target(self, ex: Exchange, next: Next, target: Target,
                         run: Run, *, last: bool = True) -> UpstreamResponse | Failed:
        budget = self.res.budget(target.key)
        tries = 0
        while True:
            tries += 1
            # an unbalanced target's attempt is its send: no coroutine of ``attempt`` in between
            result = await (self.attempt(ex, next, target, run) if target.balanced
                            else self.send(ex, next, target, run))
            rejected = isinstance(result, Failed) and result.reason == "circuit_open"
            if tries == 1 and not rejected:
                budget.record_request()  # a request the upstream saw: the base retries are a share of
            if isinstance(result, UpstreamResponse) or rejected:
                return result  # a rejection is the breaker's decision (counted there): fail over
            if result.reason == CONTEXT_EXCEEDED:
                return result  # never retried on the same model; the caller decides where it goes
            if not last and result.reason in MOVE_ON:
                self.metrics.decision("retry", "move_on")  # a silent upstream: the next target, at once
                return result
            delay = self.retry_delay(ex, target, result, tries, budget)
            if delay is None:
                return result
            await result.discard()
            self.metrics.retried(target.key, result.reason)
            if delay > 0:
                ex.record.waited_s += delay
                await self.sleep(delay)

    async def attempt(self, ex: Exchange, next: Next, target: Target,
                       run: Run) -> UpstreamResponse | Failed:
        if not target.balanced:
            return await self.send(ex, next, target, run)
        load = self.res.load(target.key)
        if run.reserved == target.key:
            run.reserved = None  # counted when it was picked
        else:
            load.begin()
        try:
            result = await self.send(ex, next, target, run)
        except BaseException:
            load.end()
            raise
        if isinstance(result, UpstreamResponse) and result.status < 300:
            body = Observed(result.body, on_end=lambda _error: load.end())  # in flight until its body ends
            return UpstreamResponse(result.status, result.headers, body, result.source, result.upstream)
        load.end()
        return result

    async def send(self, ex: Exchange, next: Next, target: Target,
                    run: Run) -> UpstreamResponse | Failed:
        started, waited_before = self.clock(), ex.record.waited_s
        try:
            resp = await next(ex)
        except CircuitOpen as exc:
            return Failed("circuit_open", error=exc)
        except UpstreamFailure as failure:
            run.attempts += 1
            self.metrics.failure(target.key, failure)
            return Failed(_PRECOMMIT_KIND.get(failure.kind, failure.kind), error=failure)
        run.attempts += 1
        # time queued by the upstream rate limit is not first-byte time
        started += ex.record.waited_s - waited_before
        status = resp.status
        if status < 300:
            return await self.commit(ex, resp, target, started)
        if status >= 500 or status in (408, 429):
            return Failed(str(status), response=resp, retry_after=retry_after_s(resp.headers, status))
        if status == 400 and self.context_planner is not None and self.context_planner(ex):
            exceeded, resp = await read_error(resp, ex.request.deadline - self.clock())
            if exceeded:
                return Failed(CONTEXT_EXCEEDED, response=resp)
        return resp  # any other 4xx: the client's problem, passed through untouched

    async def commit(self, ex: Exchange, resp: UpstreamResponse, target: Target,
                      started: float) -> UpstreamResponse | Failed:
        """Read up to the first meaningful event within the attempt's first-byte timeout."""
        ticket = take_ticket(ex)
        try:
            deadline = min(started + target.first_byte_s, ex.request.deadline)
            peeked = await peek(resp.body, resp.is_sse, deadline, self.clock)
        except TimeoutError:
            await close_body(resp.body)
            kind = "total_timeout" if self.clock() >= ex.request.deadline else "timeout_before_first_byte"
            if ex.record.attempts:
                ex.record.attempts[-1].outcome = kind
            return self.broken(ticket, target, UpstreamFailure(
                kind, f"Upstream {target.upstream}: no first token before the {kind.replace('_', ' ')}",
                upstream=target.upstream))
        except UpstreamFailure as failure:
            await close_body(resp.body)
            kind = _PRECOMMIT_KIND.get(failure.kind, failure.kind)
            precommit = UpstreamFailure(kind, failure.message, upstream=failure.upstream)
            return self.broken(ticket, target, precommit)
        except BaseException:
            settle(ticket, "ignore")
            await close_body(resp.body)
            raise
        if peeked.verdict == "error_event" or (peeked.verdict == "ended" and resp.is_sse):
            settle(ticket, "failure")
            if peeked.verdict == "ended":
                message = f"Upstream {target.upstream} ended the stream before its first event"
                return Failed("reset_before_response", error=UpstreamFailure(
                    "reset_before_response", message, upstream=target.upstream))
            body = Replay(peeked.chunks, resp.body)
            answer = UpstreamResponse(resp.status, resp.headers, body, resp.source, resp.upstream)
            return Failed("error_event", response=answer)
        settle(ticket, "success")
        hedge = route_hedge(ex.request.route, ex.request.stream)
        if hedge is not None and adaptive(hedge):  # only an adaptive hedge reads the window
            ttft = self.clock() - started
            self.res.ttft.record(ex.request.route_name, target.key, ttft, hedge.window)
        if target.balanced:
            self.res.load(target.key).observe(self.clock() - started)
        body = Replay(peeked.chunks, resp.body, ended=peeked.verdict == "ended")
        return UpstreamResponse(resp.status, resp.headers, body, resp.source, resp.upstream)

    def broken(self, ticket: Ticket | None, target: Target, failure: UpstreamFailure) -> Failed:
        settle(ticket, "failure")
        self.metrics.failure(target.key, failure)
        return Failed(failure.kind, error=failure)

    def retry_delay(self, ex: Exchange, target: Target, failed: Failed, tries: int,
                     budget: RetryBudget) -> float | None:
        """Seconds to wait before retrying on the same target, or None to stop (and maybe fail over)."""
        cfg = target.retry
        if failed.reason not in self.retryable(cfg):
            return self.stop("not_retryable")
        if tries >= cfg.max_attempts:
            return self.stop("attempts_spent")
        remaining = ex.request.deadline - self.clock()
        backoff = backoff_delay(tries, cfg, self.rand)
        wait = failed.retry_after if cfg.respect_retry_after else None
        if wait is not None:
            if wait > cfg.max_retry_after_s or wait >= remaining:
                return self.stop("retry_after_too_long")
            delay = max(wait, backoff) if max(wait, backoff) < remaining else wait
        elif backoff >= remaining:
            return self.stop("deadline")
        else:
            delay = backoff
        if self.res.breaker(target.key).rejecting():
            return self.stop("circuit_open")
        if not budget.try_spend():
            self.metrics.child(self.metrics.budget_exhausted, target.key).inc()
            return self.stop("budget_exhausted")
        return delay

    def retryable(self, cfg: RetryConfig) -> frozenset[str]:
        names = self._retry_on.get(id(cfg))
        if names is None:
            names = self._retry_on[id(cfg)] = frozenset(
                n for n in cfg.retry_on if not (n.startswith("4") and n not in RETRYABLE_4XX))
        return names

    def stop(self, why: str) -> float | None:
        """Count why retrying stops; returns None, the "no delay: stop" answer of ``_retry_delay``."""
        self.metrics.decision("retry", why)
        return None


async def drop(result: UpstreamResponse | Failed) -> None:
    """Close the answer of a hedge race's loser."""
    if isinstance(result, UpstreamResponse):
        await close_body(result.body)
    else:
        await result.discard()


def settle(ticket: Ticket | None, outcome: str) -> None:
    if ticket is not None:
        ticket.settle(outcome)  # type: ignore[arg-type]
