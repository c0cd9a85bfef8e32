"""Hedged first token: when the first token is late, the same request also starts on the next target.

``race`` runs the primary attempt; if it has not finished (committed or failed) within the
hedge delay, it starts the hedge and relays whichever commits first; the other is cancelled at
once (cancellation closes its upstream connection) and its answer, if any, is closed. The hedge
runs on a twin of the exchange (``fork``): its own target, body and typed state (breaker ticket),
the same record (attempts), so the two attempts never write each other's fields; ``adopt`` copies
the winning twin's target back. ``TtftWindows`` keeps the recent times to first token per route and
target, for ``after: p95`` and ``max_extra``. ``route_hedge`` is the hedge a request uses: the route's
own block, or ``DEFAULT_HEDGE`` for a stream on a route without one (issue 18: a silent or very late
primary is raced by the fallback after 10 s instead of being waited for until the 60 s first-byte
timeout).
A non-stream answer has no first-token signal (its first byte is the whole answer), so the default
leaves it alone: hedging it would re-run every long answer on the fallback.
"""
from __future__ import annotations

import asyncio
import bisect
import dataclasses
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from gateway.config_model import RouteConfig
from gateway.exchange import Exchange, Target
from policies.resilience.config import DEFAULT_HEDGE, HedgeConfig
from policies.resilience.validate import quantile_of

R = TypeVar("R")


class TtftWindows:
    """Recent times to first token, per (route, target key); bounded, kept sorted as well as in order
    (a quantile is an index, not a sort per request)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], tuple[deque[float], list[float]]] = {}

    def record(self, route: str, key: str, seconds: float, size: int) -> None:
        window = self._windows.get((route, key))
        if window is None or window[0].maxlen != size:
            kept = list(window[0])[-size:] if window is not None else []
            window = self._windows[(route, key)] = (deque(kept, maxlen=size), sorted(kept))
        order, ordered = window
        if len(order) == size:
            del ordered[bisect.bisect_left(ordered, order[0])]  # the oldest leaves both
        order.append(seconds)
        bisect.insort(ordered, seconds)

    def quantile(self, route: str, key: str, q: float, min_samples: int) -> float | None:
        window = self._windows.get((route, key))
        if window is None or len(window[1]) < min_samples:
            return None
        ordered = window[1]
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def route_hedge(route: RouteConfig | None, stream: bool) -> HedgeConfig | None:
    """The hedge of a request on ``route`` (the caller checks that a next target exists); None: none."""
    if route is None:
        return None
    if route.hedge is None:
        return DEFAULT_HEDGE if stream else None
    return route.hedge if route.hedge.enabled else None


def adaptive(cfg: HedgeConfig) -> bool:
    """The hedge reads the route's TTFT window (``after: pNN`` or ``max_extra``)."""
    return cfg.after is not None or cfg.max_extra is not None


def hedge_delay(cfg: HedgeConfig, windows: TtftWindows, route: str, key: str) -> float | None:
    """Seconds to wait for the primary's first token before hedging; None: do not hedge (yet)."""
    q = quantile_of(cfg.after) if cfg.after is not None else None
    if cfg.max_extra is not None:
        q = 1.0 - cfg.max_extra
    if q is not None:
        recent = windows.quantile(route, key, q, cfg.min_samples)
        if recent is not None:
            return recent
    return cfg.after_s


def fork(ex: Exchange) -> Exchange:
    """A twin for the hedge attempt: own target, headers and typed state; the same record and view."""
    return dataclasses.replace(ex, target=Target(upstream=ex.target.upstream, model=ex.target.model),
                               upstream_headers=dict(ex.upstream_headers), response_headers={},
                               state=ex.state.copy())


def adopt(ex: Exchange, twin: Exchange) -> None:
    """The hedge won: the exchange now describes the target that answered."""
    ex.target.upstream, ex.target.model = twin.target.upstream, twin.target.model
    ex.response_headers.update(twin.response_headers)
    if twin.modified and twin.body is not None:
        ex.set_body(twin.body)


@dataclasses.dataclass(slots=True)
class Race(Generic[R]):
    """How a race ended: the result to use, and ``outcome`` for ``gateway_hedges_total``."""

    result: R
    outcome: str  # not_needed | budget_exhausted | primary_won | hedge_won | both_failed
    hedge_result: bool = False  # the result came from the hedge


async def race(primary: Awaitable[R], after_s: float, start_hedge: Callable[[], Awaitable[R] | None],
               won: Callable[[R], bool], drop: Callable[[R], Awaitable[None]],
               sleep: Callable[[float], Awaitable[object]] | None = None) -> Race[R]:
    """``sleep`` (injected by tests) waits the hedge delay; by default the loop's own timer does."""
    first = asyncio.ensure_future(primary)
    tasks = [first]
    handled: set[asyncio.Future[R]] = set()  # results returned or dropped
    try:
        if await _finished_within(first, after_s, sleep):
            handled.add(first)
            return Race(first.result(), "not_needed")
        hedge = start_hedge()
        if hedge is None:
            handled.add(first)
            return Race(await first, "budget_exhausted")
        second = asyncio.ensure_future(hedge)
        tasks.append(second)
        return await _first_win(first, second, won, drop, handled)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()  # the loser: cancelling its send/peek closes its upstream connection
        for task in tasks:
            if task not in handled:
                await _drop_leftover(task, drop)


async def _finished_within(task: asyncio.Future[R], after_s: float,
                           sleep: Callable[[float], Awaitable[object]] | None) -> bool:
    if sleep is None:
        done, _ = await asyncio.wait({task}, timeout=after_s)
        return bool(done)
    timer: asyncio.Future[Any] = asyncio.ensure_future(sleep(after_s))
    either: set[asyncio.Future[Any]] = {task, timer}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    return task.done()


async def _first_win(first: asyncio.Future[R], second: asyncio.Future[R], won: Callable[[R], bool],
                     drop: Callable[[R], Awaitable[None]], handled: set[asyncio.Future[R]]) -> Race[R]:
    pending: set[asyncio.Future[R]] = {first, second}
    failed: dict[asyncio.Future[R], R] = {}
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in (first, second):  # the primary first on a tie
            if task not in done:
                continue
            result = task.result()
            handled.add(task)
            if won(result):
                for earlier in failed.values():
                    await drop(earlier)
                by_hedge = task is second
                return Race(result, "hedge_won" if by_hedge else "primary_won", hedge_result=by_hedge)
            failed[task] = result
    await drop(failed[first])  # both failed: the hedge's (the later target's) failure is the answer
    return Race(failed[second], "both_failed", hedge_result=True)


async def _drop_leftover(task: asyncio.Future[R], drop: Callable[[R], Awaitable[None]]) -> None:
    """Wait for a cancelled loser to end; an answer it produced meanwhile is closed, never relayed."""
    try:
        result = await task
    except (asyncio.CancelledError, Exception):
        return
    await drop(result)
