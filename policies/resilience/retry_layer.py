"""Retries and failover across a route's targets: the plan, hedges, continuations, giving up.

For each target of the plan (``policies/resilience/targets.py``: the route's upstream, or its
deployments best first (``balance.py``), then its fallbacks) the policy runs that target's attempts
(``attempts.py``: the call, the commit point, retries with backoff, Retry-After and a budget on the
same target) and, when they fail, fails over to the next one.

Issue 18: a first-byte timeout (a silent upstream) MOVES ON to the next target at once
instead of waiting on the same one again; a provider 400 ``context_length_exceeded`` goes
to the route's ``context_fallbacks`` (``context_window.py``) instead of its same-size
fallbacks; with ``hedge`` a late first token races the next target (``hedge.py``); and
with a fallback that can continue, a committed stream that later breaks is finished by it
(``continuation.py``, ``continuation_responses.py``).

Once this policy returns, nothing is retried, and a later failure ends the stream with an error
event (the handler does that). The answer carries ``x-gateway-attempts``; when the gateway retried
and still failed it also carries ``x-should-retry: false`` so the client SDK does not multiply the
attempts.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.appstate import AppState
from gateway.chain import Next
from gateway.components import CONTINUED_FROM
from gateway.config_model import Config
from gateway.errors import LocalReply
from gateway.exchange import Exchange, UpstreamResponse
from policies.resilience.attempts import CONTEXT_EXCEEDED, Failed, Planner, Run, Sleep, TargetAttempts, drop
from policies.resilience.breaker_layer import take_ticket
from policies.resilience.continuation import Mode, Spliced, continuation_body, responses_body
from policies.resilience.continuation_responses import ResponsesRewrite, ResponsesSoFar
from policies.resilience.hedge import adopt, fork, hedge_delay, race, route_hedge
from policies.resilience.registry import Resilience, resilience_of
from policies.resilience.targets import RoutePlanner, Target, switch_to

log = logging.getLogger("gateway.resilience")
_CONTINUED = frozenset({"chat", "responses"})  # operations whose broken streams can be continued


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
        self.hedge_sleep = hedge_sleep  # None: the loop's timer (tests inject a clock)
        self.attempts = TargetAttempts(res=res, clock=clock, sleep=sleep, rand=rand,
                                       context_planner=context_planner)

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        targets = list(self.planner(ex))
        run = Run()
        primary_model = ex.target.model
        if targets[0].balanced:
            switch_to(ex, targets[0], primary_model)  # the deployment picked for this request (and its model)
        failed: Failed | None = None
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

    async def _next_result(self, ex: Exchange, next: Next, targets: list[Target], index: int, run: Run,
                           primary_model: str) -> tuple[UpstreamResponse | Failed, int]:
        """The outcome of ``targets[index]`` (raced against the next one when the route hedges),
        and the index of the first target not yet tried."""
        last = index == len(targets) - 1
        hedge = route_hedge(ex.request.route, ex.request.stream) if index == 0 and not last else None
        after = hedge_delay(hedge, self.res.ttft, ex.request.route_name, targets[0].key) if hedge else None
        if after is None:
            return await self.attempts.on_target(ex, next, targets[index], run, last=last), index + 1
        twin = fork(ex)
        take_ticket(twin)  # the primary's pending breaker ticket is the primary's to settle
        hedge_target = targets[index + 1]

        def start_hedge() -> Awaitable[UpstreamResponse | Failed] | None:
            if not self.res.budget(targets[index].key).try_spend():  # a hedge is an extra upstream call
                self.metrics.child(self.metrics.budget_exhausted, targets[index].key).inc()
                return None
            switch_to(twin, hedge_target, primary_model)
            return self.attempts.on_target(twin, next, hedge_target, run, last=index + 1 == len(targets) - 1)

        primary = targets[index]
        if primary.balanced:  # counted now: requests arriving before its task starts must see it
            self.res.load(primary.key).begin()
            run.reserved = primary.key
        started = self.clock()
        try:
            primary_try = self.attempts.on_target(ex, next, primary, run, last=False)
            raced = await race(primary_try, after, start_hedge,
                               won=lambda r: isinstance(r, UpstreamResponse), drop=drop,
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
                           primary_model: str, run: Run) -> UpstreamResponse:
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

    async def _resume(self, ex: Exchange, next: Next, able: list[Target], primary_model: str, run: Run,
                      text: str, chunks: int) -> tuple[UpstreamResponse, str] | None:
        """The rest of a broken answer from the first target that can give it (committed), or None."""
        for target in able:
            twin = fork(ex)
            take_ticket(twin)
            switch_to(twin, target, primary_model)
            assert twin.body is not None
            twin.set_body(_continuation_request(ex.request.operation, twin.body, text, chunks, target))
            result = await self.attempts.on_target(twin, next, target, run)
            if isinstance(result, UpstreamResponse) and result.status < 300 and result.is_sse:
                ex.target.upstream, ex.target.model = twin.target.upstream, twin.target.model
                return result, target.upstream
            await drop(result)  # e.g. a 400: this fallback refuses a prefill; the client never sees it
        return None

    def _to_context_plan(self, ex: Exchange, targets: list[Target], index: int, run: Run) -> None:
        """The prompt is too long for this model: only a larger window helps, not same-size fallbacks."""
        run.context_switched = True
        targets[index:] = self.context_planner(ex) if self.context_planner is not None else ()
        self.metrics.decision("retry", "context_fallback" if index < len(targets) else "context_exceeded")

    def _fail_over(self, ex: Exchange, target: Target, primary_model: str, run: Run) -> None:
        self.metrics.child(self.metrics.fallbacks, ex.request.route_name, ex.target.upstream,
                           target.upstream).inc()
        self.metrics.decision("retry", "fallback")
        run.failovers += 1
        switch_to(ex, target, primary_model)

    def _give_up(self, ex: Exchange, failed: Failed, run: Run) -> UpstreamResponse:
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


async def factory(state: AppState, config: Config) -> RetryPolicy:
    res = resilience_of(state, config)
    planner = RoutePlanner(config, res)
    return RetryPolicy(res=res, planner=planner, clock=state.clock,
                       context_planner=planner.context_plan)
