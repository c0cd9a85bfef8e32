"""Retries with backoff, Retry-After and a budget; failover to the route's fallbacks; the commit point.

For each target of the plan (``policies/resilience/targets.py``: the route's upstream, or its
deployments best first (``balance.py``), then its fallbacks) the policy calls the inner
layers (circuit breaker -> upstream rate limit -> upstream) up to ``max_attempts`` times.
An attempt fails on a connect/reset/timeout failure, a 408/429/5xx, or a stream whose first event is an
error; it is retried when its reason is in ``retry_on`` (4xx other than 408/429
never are), attempts remain, the retry budget allows, the breaker is not open and
the wait fits the total deadline. A ``Retry-After`` (or ``retry-after-ms``,
``x-ratelimit-reset-*`` on a 429) that does not fit ``min(max_retry_after_s,
remaining deadline)`` is not waited for: the answer goes back at once with its
headers (or to the next fallback, when there is one).

Issue 18: a first-byte timeout (a silent upstream) MOVES ON to the next target at once
instead of waiting on the same one again; a provider 400 ``context_length_exceeded`` goes
to the route's ``context_fallbacks`` (``context_window.py``) instead of its same-size
fallbacks; with ``hedge`` a late first token races the next target (``hedge.py``); and
with a fallback that can continue, a committed stream that later breaks is finished by it
(``continuation.py``, ``continuation_responses.py``).

THE COMMIT POINT: a 2xx answer is not returned until its first meaningful event
(``policies/resilience/commit.py``) has been read, within the attempt's first-byte
timeout. Until then a stall, a reset or an error event is still retryable; once
this policy returns, nothing is retried, and a later failure ends the stream with
an error event (the handler does that). The answer carries ``x-gateway-attempts``;
when the gateway retried and still failed it also carries ``x-should-retry: false``
so the client SDK does not multiply the attempts.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.appstate import AppState
from gateway.body import Observed
from gateway.chain import Next
from gateway.components import CONTINUED_FROM
from gateway.config_model import Config
from gateway.errors import LocalReply, UpstreamFailure
from gateway.exchange import Exchange, UpstreamResponse
from gateway.retry_after import retry_after_s
from policies.resilience.backoff import backoff_delay
from policies.resilience.breaker import CircuitOpen, Ticket
from policies.resilience.breaker_layer import take_ticket
from policies.resilience.commit import Replay, close_body, peek
from policies.resilience.config import RetryConfig
from policies.resilience.context_window import read_error
from policies.resilience.continuation import Mode, Spliced, continuation_body, responses_body
from policies.resilience.continuation_responses import ResponsesRewrite, ResponsesSoFar
from policies.resilience.hedge import adaptive, adopt, fork, hedge_delay, race, route_hedge
from policies.resilience.registry import Resilience, resilience_of
from policies.resilience.retry_budget import RetryBudget
from policies.resilience.targets import Plan, RoutePlanner, Target, switch_to
from policies.resilience.validate import RETRYABLE_4XX

log = logging.getLogger("gateway.resilience")
Planner = Callable[[Exchange], Plan]
Sleep = Callable[[float], Awaitable[object]]
# Failures that say "this upstream is slow or silent", not "try again": with a later target in the
# plan they move on to it at once instead of waiting out the same timeout again on the same upstream.
_CONTINUED = frozenset({"chat", "responses"})  # operations whose broken streams can be continued
CONTEXT_EXCEEDED = "context_length_exceeded"  # a provider 400: the prompt does not fit this model
MOVE_ON = frozenset({"timeout_before_first_byte", "connect_timeout", "idle_timeout"})
# Seen from the client, a failure before the commit point is always "before the response".
_PRECOMMIT_KIND = {"reset_mid_stream": "reset_before_response", "idle_timeout": "timeout_before_first_byte",
                   "connect_timeout": "connect_error"}


@dataclass(slots=True)
class _Run:
    attempts: int = 0  # calls that reached an upstream (breaker rejections are not attempts)
    failovers: int = 0
    context_switched: bool = False  # the plan was replaced by the route's context_fallbacks
    # A balanced target counted in flight when it was picked, before its attempt's task started
    # (a hedged primary runs in a task of its own): its first attempt does not count it again.
    reserved: str | None = None


@dataclass(slots=True)
class _Failed:
    """A failed attempt: an exception to raise, or a response to hand back if nothing better comes."""

    reason: str  # a retry_on name: failure kind, status code, "error_event", or "circuit_open"
    error: Exception | None = None
    response: UpstreamResponse | None = None
    retry_after: float | None = None

    async def discard(self) -> None:
        if self.response is not None:
            await close_body(self.response.body)
            self.response = None


class RetryPolicy:
    name = "retry"

    def __init__(self, *, res: Resilience, planner: Planner, clock: Callable[[], float],
                 sleep: Sleep = asyncio.sleep, rand: Callable[[], float] = random.random,
                 context_planner: Planner | None = None, hedge_sleep: Sleep | None = None) -> None:
        self.res = res
        self.metrics = res.metrics
        self.planner = planner
        self.context_planner = context_planner
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        self.hedge_sleep = hedge_sleep  # None: the loop's timer (tests inject a clock)
        self._retry_on: dict[int, frozenset[str]] = {}

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        targets = list(self.planner(ex))
        run = _Run()
        primary_model = ex.target.model
        if targets[0].balanced:
            switch_to(ex, targets[0], primary_model)  # the deployment picked for this request (and its model)
        failed: _Failed | None = None
        index = 0
        while index < len(targets):
            if failed is not None:
                if failed.reason == "total_timeout" or self.clock() >= ex.request.deadline:
                    break
                await failed.discard()
                self._fail_over(ex, targets[index], primary_model, run)
            result, index = await self._next_result(ex, next, targets, index, run, primary_model)
            if isinstance(result, UpstreamResponse):
                ex.response_headers["x-gateway-attempts"] = str(run.attempts)
                if run.attempts > 1 or run.failovers:
                    self.metrics.decision("retry", "recovered")
                return self._with_continuation(ex, next, result, targets[index:], primary_model, run)
            failed = result
            if result.reason == CONTEXT_EXCEEDED and not run.context_switched:
                self._to_context_plan(ex, targets, index, run)
        assert failed is not None, "a plan has at least one target"
        return self._give_up(ex, failed, run)

    async def _next_result(self, ex: Exchange, next: Next, targets: list[Target], index: int, run: _Run,
                           primary_model: str) -> tuple[UpstreamResponse | _Failed, int]:
        """The outcome of ``targets[index]`` (raced against the next one when the route hedges),
        and the index of the first target not yet tried."""
        last = index == len(targets) - 1
        hedge = route_hedge(ex.request.route, ex.request.stream) if index == 0 and not last else None
        after = hedge_delay(hedge, self.res.ttft, ex.request.route_name, targets[0].key) if hedge else None
        if after is None:
            return await self._on_target(ex, next, targets[index], run, last=last), index + 1
        twin = fork(ex)
        take_ticket(twin)  # the primary's pending breaker ticket is the primary's to settle
        hedge_target = targets[index + 1]

        def start_hedge() -> Awaitable[UpstreamResponse | _Failed] | None:
            if not self.res.budget(targets[index].key).try_spend():  # a hedge is an extra upstream call
                self.metrics.child(self.metrics.budget_exhausted, targets[index].key).inc()
                return None
            switch_to(twin, hedge_target, primary_model)
            return self._on_target(twin, next, hedge_target, run, last=index + 1 == len(targets) - 1)

        primary = targets[index]
        if primary.balanced:  # counted now: requests arriving before its task starts must see it
            self.res.load(primary.key).begin()
            run.reserved = primary.key
        started = self.clock()
        try:
            raced = await race(self._on_target(ex, next, primary, run, last=False), after, start_hedge,
                               won=lambda r: isinstance(r, UpstreamResponse), drop=_drop,
                               sleep=self.hedge_sleep)
        finally:
            if run.reserved is not None:  # the primary's task never started (cancelled at once)
                self.res.load(run.reserved).end()
                run.reserved = None
        if raced.outcome == "hedge_won" and hedge is not None and hedge.max_extra is not None:
            # the primary's first token was at least this late: without it, the window would only hold
            # the primaries fast enough to win, and its 1 - max_extra quantile would hedge more than that
            self.res.ttft.record(ex.request.route_name, primary.key, self.clock() - started, hedge.window)
        self.metrics.child(self.metrics.hedges, ex.request.route_name, raced.outcome).inc()
        if raced.outcome != "not_needed":
            ex.response_headers["x-gateway-hedge"] = raced.outcome
        if raced.hedge_result:
            adopt(ex, twin)
        return raced.result, index + (1 if raced.outcome in ("not_needed", "budget_exhausted") else 2)

    def _with_continuation(self, ex: Exchange, next: Next, resp: UpstreamResponse, rest: list[Target],
                           primary_model: str, run: _Run) -> UpstreamResponse:
        """A committed chat stream, wrapped so that a later break is finished by one of ``rest``."""
        route = ex.request.route
        wanted = route.continue_on_break if route is not None else False
        able = [t for t in rest if t.continuation != "none"]
        if (not able or wanted is False or route is None or ex.request.operation not in _CONTINUED
                or not resp.is_sse or resp.status >= 300 or ex.body is None):
            return resp
        broken_key = ex.target.upstream

        async def resume(text: str, chunks: int) -> tuple[UpstreamResponse, str] | None:
            if not self.res.budget(broken_key).try_spend():  # a continuation is an extra upstream call
                self.metrics.child(self.metrics.budget_exhausted, broken_key).inc()
                return None
            return await self._resume(ex, next, able, primary_model, run, text, chunks)

        def report(outcome: str, upstream: str) -> None:
            self.metrics.child(self.metrics.continuations, ex.request.route_name, outcome).inc()
            if outcome == "continued":
                ex.state.set(CONTINUED_FROM, broken_key)  # the log line and the ledger record say so
                log.info("stream continued", extra={"fields": {
                    "event": "stream_continued", "request_id": ex.request.request_id,
                    "route": ex.request.route_name, "from": broken_key, "to": upstream}})

        responses = ex.request.operation == "responses"
        body = (Spliced(resp.body, resume, report, ResponsesSoFar(), ResponsesRewrite) if responses
                else Spliced(resp.body, resume, report))
        return UpstreamResponse(resp.status, resp.headers, body, resp.source, resp.upstream)

    async def _resume(self, ex: Exchange, next: Next, able: list[Target], primary_model: str, run: _Run,
                      text: str, chunks: int) -> tuple[UpstreamResponse, str] | None:
        """The rest of a broken answer from the first target that can give it (committed), or None."""
        for target in able:
            twin = fork(ex)
            take_ticket(twin)
            switch_to(twin, target, primary_model)
            assert twin.body is not None
            twin.set_body(_continuation_request(ex.request.operation, twin.body, text, chunks, target))
            result = await self._on_target(twin, next, target, run)
            if isinstance(result, UpstreamResponse) and result.status < 300 and result.is_sse:
                ex.target.upstream, ex.target.model = twin.target.upstream, twin.target.model
                return result, target.upstream
            await _drop(result)  # e.g. a 400: this fallback refuses a prefill; the client never sees it
        return None

    def _to_context_plan(self, ex: Exchange, targets: list[Target], index: int, run: _Run) -> None:
        """The prompt is too long for this model: only a larger window helps, not same-size fallbacks."""
        run.context_switched = True
        targets[index:] = self.context_planner(ex) if self.context_planner is not None else ()
        self.metrics.decision("retry", "context_fallback" if index < len(targets) else "context_exceeded")

    async def _on_target(self, ex: Exchange, next: Next, target: Target,
                         run: _Run, *, last: bool = True) -> UpstreamResponse | _Failed:
        budget = self.res.budget(target.key)
        tries = 0
        while True:
            tries += 1
            result = await self._attempt(ex, next, target, run)
            rejected = isinstance(result, _Failed) and result.reason == "circuit_open"
            if tries == 1 and not rejected:
                budget.record_request()  # a request the upstream saw: the base retries are a share of
            if isinstance(result, UpstreamResponse) or rejected:
                return result  # a rejection is the breaker's decision (counted there): fail over
            if result.reason == CONTEXT_EXCEEDED:
                return result  # never retried on the same model; the caller decides where it goes
            if not last and result.reason in MOVE_ON:
                self.metrics.decision("retry", "move_on")  # a silent upstream: the next target, at once
                return result
            delay = self._retry_delay(ex, target, result, tries, budget)
            if delay is None:
                return result
            await result.discard()
            self.metrics.retried(target.key, result.reason)
            if delay > 0:
                ex.record.waited_s += delay
                await self.sleep(delay)

    async def _attempt(self, ex: Exchange, next: Next, target: Target,
                       run: _Run) -> UpstreamResponse | _Failed:
        if not target.balanced:
            return await self._send(ex, next, target, run)
        load = self.res.load(target.key)
        if run.reserved == target.key:
            run.reserved = None  # counted when it was picked
        else:
            load.begin()
        try:
            result = await self._send(ex, next, target, run)
        except BaseException:
            load.end()
            raise
        if isinstance(result, UpstreamResponse) and result.status < 300:
            body = Observed(result.body, on_end=lambda _error: load.end())  # in flight until its body ends
            return UpstreamResponse(result.status, result.headers, body, result.source, result.upstream)
        load.end()
        return result

    async def _send(self, ex: Exchange, next: Next, target: Target,
                    run: _Run) -> UpstreamResponse | _Failed:
        started, waited_before = self.clock(), ex.record.waited_s
        try:
            resp = await next(ex)
        except CircuitOpen as exc:
            return _Failed("circuit_open", error=exc)
        except UpstreamFailure as failure:
            run.attempts += 1
            self.metrics.failure(target.key, failure)
            return _Failed(_PRECOMMIT_KIND.get(failure.kind, failure.kind), error=failure)
        run.attempts += 1
        # time queued by the upstream rate limit is not first-byte time
        started += ex.record.waited_s - waited_before
        status = resp.status
        if status < 300:
            return await self._commit(ex, resp, target, started)
        if status >= 500 or status in (408, 429):
            return _Failed(str(status), response=resp, retry_after=retry_after_s(resp.headers, status))
        if status == 400 and self.context_planner is not None and self.context_planner(ex):
            exceeded, resp = await read_error(resp, ex.request.deadline - self.clock())
            if exceeded:
                return _Failed(CONTEXT_EXCEEDED, response=resp)
        return resp  # any other 4xx: the client's problem, passed through untouched

    async def _commit(self, ex: Exchange, resp: UpstreamResponse, target: Target,
                      started: float) -> UpstreamResponse | _Failed:
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
            return self._broken(ticket, target, UpstreamFailure(
                kind, f"Upstream {target.upstream}: no first token before the {kind.replace('_', ' ')}",
                upstream=target.upstream))
        except UpstreamFailure as failure:
            await close_body(resp.body)
            kind = _PRECOMMIT_KIND.get(failure.kind, failure.kind)
            precommit = UpstreamFailure(kind, failure.message, upstream=failure.upstream)
            return self._broken(ticket, target, precommit)
        except BaseException:
            _settle(ticket, "ignore")
            await close_body(resp.body)
            raise
        if peeked.verdict == "error_event" or (peeked.verdict == "ended" and resp.is_sse):
            _settle(ticket, "failure")
            if peeked.verdict == "ended":
                message = f"Upstream {target.upstream} ended the stream before its first event"
                return _Failed("reset_before_response", error=UpstreamFailure(
                    "reset_before_response", message, upstream=target.upstream))
            body = Replay(peeked.chunks, resp.body)
            answer = UpstreamResponse(resp.status, resp.headers, body, resp.source, resp.upstream)
            return _Failed("error_event", response=answer)
        _settle(ticket, "success")
        hedge = route_hedge(ex.request.route, ex.request.stream)
        if hedge is not None and adaptive(hedge):  # only an adaptive hedge reads the window
            ttft = self.clock() - started
            self.res.ttft.record(ex.request.route_name, target.key, ttft, hedge.window)
        if target.balanced:
            self.res.load(target.key).observe(self.clock() - started)
        body = Replay(peeked.chunks, resp.body, ended=peeked.verdict == "ended")
        return UpstreamResponse(resp.status, resp.headers, body, resp.source, resp.upstream)

    def _broken(self, ticket: Ticket | None, target: Target, failure: UpstreamFailure) -> _Failed:
        _settle(ticket, "failure")
        self.metrics.failure(target.key, failure)
        return _Failed(failure.kind, error=failure)

    def _retry_delay(self, ex: Exchange, target: Target, failed: _Failed, tries: int,
                     budget: RetryBudget) -> float | None:
        """Seconds to wait before retrying on the same target, or None to stop (and maybe fail over)."""
        cfg = target.retry
        if failed.reason not in self._retryable(cfg):
            return self._stop("not_retryable")
        if tries >= cfg.max_attempts:
            return self._stop("attempts_spent")
        remaining = ex.request.deadline - self.clock()
        backoff = backoff_delay(tries, cfg, self.rand)
        wait = failed.retry_after if cfg.respect_retry_after else None
        if wait is not None:
            if wait > cfg.max_retry_after_s or wait >= remaining:
                return self._stop("retry_after_too_long")
            delay = max(wait, backoff) if max(wait, backoff) < remaining else wait
        elif backoff >= remaining:
            return self._stop("deadline")
        else:
            delay = backoff
        if self.res.breaker(target.key).rejecting():
            return self._stop("circuit_open")
        if not budget.try_spend():
            self.metrics.child(self.metrics.budget_exhausted, target.key).inc()
            return self._stop("budget_exhausted")
        return delay

    def _retryable(self, cfg: RetryConfig) -> frozenset[str]:
        names = self._retry_on.get(id(cfg))
        if names is None:
            names = self._retry_on[id(cfg)] = frozenset(
                n for n in cfg.retry_on if not (n.startswith("4") and n not in RETRYABLE_4XX))
        return names

    def _stop(self, why: str) -> float | None:
        """Count why retrying stops; returns None, the "no delay: stop" answer of ``_retry_delay``."""
        self.metrics.decision("retry", why)
        return None

    def _fail_over(self, ex: Exchange, target: Target, primary_model: str, run: _Run) -> None:
        self.metrics.child(self.metrics.fallbacks, ex.request.route_name, ex.target.upstream,
                           target.upstream).inc()
        self.metrics.decision("retry", "fallback")
        run.failovers += 1
        switch_to(ex, target, primary_model)

    def _give_up(self, ex: Exchange, failed: _Failed, run: _Run) -> UpstreamResponse:
        """Every target failed: hand back the last answer, or raise the last failure."""
        headers = {"x-gateway-attempts": str(run.attempts)}
        if run.attempts > 1 or run.failovers:
            headers["x-should-retry"] = "false"  # we already retried: the client's SDK must not multiply it
            self.metrics.decision("retry", "gave_up")
        ex.response_headers.update(headers)
        if failed.response is not None:
            return failed.response
        error = failed.error
        if isinstance(error, LocalReply):
            error.headers.update(headers)
        assert error is not None
        raise error  # an UpstreamFailure: the handler answers 502/504 with ex.response_headers


def _continuation_request(operation: str, body: dict[str, Any], text: str, chunks: int,
                          target: Target) -> dict[str, Any]:
    if operation == "responses":
        return responses_body(body, text, chunks)
    final = target.continuation == "continue_final_message"
    mode: Mode = "continue_final_message" if final else "prefill"
    return continuation_body(body, text, chunks, mode)


async def _drop(result: UpstreamResponse | _Failed) -> None:
    """Close the answer of a hedge race's loser."""
    if isinstance(result, UpstreamResponse):
        await close_body(result.body)
    else:
        await result.discard()


def _settle(ticket: Ticket | None, outcome: str) -> None:
    if ticket is not None:
        ticket.settle(outcome)  # type: ignore[arg-type]


async def factory(state: AppState, config: Config) -> RetryPolicy:
    res = resilience_of(state, config)
    planner = RoutePlanner(config, res)
    return RetryPolicy(res=res, planner=planner, clock=state.clock,
                       context_planner=planner.context_plan)
