"""In-process rolling windows behind ``/admin/stats`` and the live dashboard.

Why in process: a developer whose agent feels slow wants to look at once,
without Prometheus and Grafana. The figures are the ones the metrics record,
kept per second for the last 15 minutes in a ring of ``Second`` buckets.

Cost model (the contract of this module):
- ``record`` is a request sink: O(1) per request, a handful of list and dict
  increments into the bucket of the current second. No percentile, no sort,
  no allocation beyond a new bucket once per second. It never iterates over
  stream chunks: inter-token latency is the request's mean gap, from the
  stream inspector's first/last token times and chunk count.
- Reading (``snapshot``/``rows``) seals finished seconds into running window
  totals (each second is added once and subtracted once when it leaves the
  window), computes percentiles from the totals' histograms, and memoises the
  result until the second or the request count changes. A dashboard polling
  once per second therefore costs one computation per second, not per client.
- Memory is bounded: 900 buckets, each keyed only by bounded model labels
  (``state.metrics.bounded_model``), configured tenants and cache results,
  plus the last 50 requests (metadata only, never prompt text).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway.exchange import Attempt, Exchange
from gateway.telemetry import live_window as w
from gateway.telemetry.live_window import (
    CACHED,
    CLIENT_ERR,
    COMPLETION,
    COST,
    ERR,
    OK,
    PROMPT,
    REASONING,
    REQ,
    Second,
)

WINDOW_S = 900
RECENT_MAX = 50
CACHE_RESULTS = frozenset({"none", "hit", "semantic-hit", "miss", "bypass", "coalesced"})
SERVED_BY_CACHE = frozenset({"hit", "semantic-hit", "coalesced"})
TOKENS_SAVED_HEADER = "x-gateway-tokens-saved"
Pricer = Callable[[Exchange], float]


class LiveStats:
    """Rolling per-second windows over finished exchanges; one per process, on ``state.stats``."""

    def __init__(self, *, clock: Callable[[], float], bounded_model: Callable[[str], str],
                 pricer: Pricer, inflight: Callable[[], int], wall: Callable[[], float] = time.time,
                 window_s: int = WINDOW_S) -> None:
        self.clock, self.wall = clock, wall
        self.bounded_model, self.pricer, self.inflight = bounded_model, pricer, inflight
        self.window_s = window_s
        self.started_at = clock()
        self.records = 0  # requests recorded since start; part of the memo key
        self._ring: list[Second | None] = [None] * window_s
        self._totals = Second()  # sum of the sealed seconds still in the window
        self._sealed_to = int(self.started_at) - 1  # last second added to the totals
        self.recent: deque[tuple[Any, ...]] = deque(maxlen=RECENT_MAX)
        self._memo: tuple[tuple[int, int], Second] | None = None
        self._model_keys: dict[str, tuple[tuple[str, str], tuple[str, str], tuple[str, str]]] = {}

    # ---- the hot path -------------------------------------------------------------------------
    def record(self, ex: Exchange) -> None:
        """Request sink: add one finished exchange to the bucket of its end second."""
        rec, request = ex.record, ex.request
        end = rec.ended_at
        sec = int(end)
        if sec <= self._sealed_to:  # a clock that went back: count it in the current open second
            sec = self._sealed_to + 1
        b = self._bucket(sec)
        self.records += 1
        g = b.g
        status = rec.status
        model = self.bounded_model(request.model)
        keys = self._model_keys.get(model) or self._keys_for(model)
        failed = status >= 500 or status == 0 or rec.stream_outcome in ("error_event", "cut")
        g[REQ] += 1
        if failed:
            g[ERR] += 1
        elif status >= 400:
            g[CLIENT_ERR] += 1
        else:
            g[OK] += 1
        b.observe("lat", keys[0], end - request.received_at)
        from_upstream = rec.source == "upstream"
        if rec.first_token_at > 0.0 and not failed and status < 400:
            b.observe("ttft", keys[1] if from_upstream else None, rec.first_token_at - request.received_at)
        inspector = ex.view
        if inspector is not None and inspector.content_chunks > 1:  # mean gap: O(1), not per chunk
            b.observe("itl", keys[2],
                      (inspector.last_token_at - inspector.first_token_at) / (inspector.content_chunks - 1))
        cost = self._record_tokens(g, ex, from_upstream)
        _add_group(b.models, model, failed, ex, cost, from_upstream)
        _add_group(b.tenants, request.identity.tenant, failed, ex, cost, from_upstream)
        if rec.attempts or rec.error_kind or rec.waited_s:
            _record_resilience(b, ex)
        _record_savings(b, ex)
        inflight = self.inflight() + 1
        if inflight > b.peak_inflight:  # noqa: PLR1730 (hot path: no call)
            b.peak_inflight = inflight
        self.recent.append(_recent_row(ex, status))

    def _keys_for(self, model: str) -> tuple[tuple[str, str], tuple[str, str], tuple[str, str]]:
        """Per-model histogram keys, built once per (bounded) model label."""
        keys = self._model_keys[model] = (("lat", model), ("ttft", model), ("itl", model))
        return keys

    def _bucket(self, sec: int) -> Second:
        i = sec % self.window_s
        b = self._ring[i]
        if b is None or b.stamp != sec:
            if b is not None and b.stamp <= self._sealed_to:
                self._expire(b)
            b = self._ring[i] = Second(sec)
        return b

    def _record_tokens(self, g: list[float], ex: Exchange, from_upstream: bool) -> float:
        """Count tokens spent upstream (a cache hit spends none) and return their cost."""
        usage = ex.record.usage
        if usage is None or not from_upstream:
            return 0.0
        g[PROMPT] += usage.prompt
        g[COMPLETION] += usage.completion
        g[CACHED] += usage.cached_prompt
        g[REASONING] += usage.reasoning
        cost = self.pricer(ex)
        g[COST] += cost
        return cost

    # ---- reading ------------------------------------------------------------------------------
    def window(self, *, exact: bool = True) -> Second:
        """Totals over the window, including the second in progress.

        Memoised: ``exact`` reuses the last result only if no request ended since (for
        ``GET /admin/stats``); otherwise any result from the same second is good enough, so
        any number of open dashboards cost one computation per second between them.
        """
        now = int(self.clock())
        key = (now, self.records)
        memo = self._memo
        if memo is not None and (memo[0] == key or (not exact and memo[0][0] == now)):
            return memo[1]
        self._advance(now)
        view = self._totals.copy()
        current = self._ring[now % self.window_s]
        if current is not None and current.stamp == now:
            view.merge(current)
        self._memo = (key, view)
        return view

    def rows(self, since: int | None = None) -> list[dict[str, Any]]:
        """Chart rows, one per finished second in the window (after ``since``, a loop second)."""
        now = int(self.clock())
        self._advance(now)
        first = max(now - self.window_s + 1, int(self.started_at))  # a young gateway: its lifetime only
        if since is not None:
            first = max(first, since + 1)
        offset = self.wall() - self.clock()
        rows: list[dict[str, Any]] = []
        for sec in range(first, now):
            b = self._ring[sec % self.window_s]
            if b is None or b.stamp != sec:
                rows.append({"t": round(sec + offset, 3), "sec": sec, "requests": 0})
                continue
            if b.point is None:
                b.point = _point(b)
            rows.append({"t": round(sec + offset, 3), "sec": sec, **b.point})
        return rows

    def recent_sums(self, seconds: int) -> list[float]:
        """Global counters summed over the last ``seconds`` seconds, the one in progress included."""
        now = int(self.clock())
        out = [0.0] * w.N_GLOBAL
        for sec in range(now - min(seconds, self.window_s) + 1, now + 1):
            b = self._ring[sec % self.window_s]
            if b is not None and b.stamp == sec:
                for i, v in enumerate(b.g):
                    out[i] += v
        return out

    def _advance(self, now: int) -> None:
        """Seal finished seconds into the totals and expire those that left the window."""
        start = max(self._sealed_to + 1, now - self.window_s)
        for sec in range(start, now):
            b = self._ring[sec % self.window_s]
            if b is not None and b.stamp == sec:
                self._totals.merge(b)
        self._sealed_to = max(self._sealed_to, now - 1)
        oldest = now - self.window_s + 1
        for i, b in enumerate(self._ring):
            if b is not None and b.stamp < oldest:
                self._expire(b)
                self._ring[i] = None

    def _expire(self, b: Second) -> None:
        if b.stamp <= self._sealed_to:
            self._totals.merge(b, -1)


_HEDGE_RACED = frozenset({"hedge_won", "primary_won", "both_failed"})  # x-gateway-hedge: a hedge was sent


def _record_resilience(b: Second, ex: Exchange) -> None:
    g = b.g
    record = ex.record
    attempts = record.attempts
    if len(attempts) > 1:
        g[w.RETRIED] += 1
        g[w.EXTRA_ATTEMPTS] += len(attempts) - 1
        first = attempts[0]
        if ex.target.upstream != first.upstream or attempts[-1].model != first.model:
            g[w.FALLBACKS] += 1
    headers = ex.response_headers
    if headers and headers.get("x-gateway-hedge") in _HEDGE_RACED:
        g[w.HEDGED] += 1
    if "timeout" in record.error_kind or _timed_out(attempts):
        g[w.TIMEOUTS] += 1
    if record.waited_s > 0.0:
        g[w.WAITED] += 1
        g[w.WAIT_S] += record.waited_s
        b.observe("wait", None, record.waited_s)


def _timed_out(attempts: list[Attempt]) -> bool:
    for attempt in attempts:  # a loop, not any(generator): one attempt is the common case
        if "timeout" in attempt.outcome:
            return True
    return False


def _record_savings(b: Second, ex: Exchange) -> None:
    result = ex.record.cache_result if ex.record.cache_result in CACHE_RESULTS else "other"
    b.cache[result] = b.cache.get(result, 0) + 1
    usage = ex.record.usage
    if result in SERVED_BY_CACHE and usage is not None:
        b.g[w.SAVED_CACHE] += usage.prompt + usage.completion
    saved = ex.response_headers.get(TOKENS_SAVED_HEADER)
    if saved:
        try:
            n = int(saved)
        except ValueError:
            return
        if n > 0:
            b.g[w.SAVED_COMP] += n
            b.g[w.COMP_REQ] += 1


def _add_group(groups: dict[str, list[float]], name: str, failed: bool, ex: Exchange, cost: float,
               from_upstream: bool) -> None:
    row = groups.get(name)
    if row is None:
        row = groups[name] = [0] * w.N_GROUP
    row[w.M_REQ] += 1
    if failed:
        row[w.M_ERR] += 1
    usage = ex.record.usage
    if usage is not None and from_upstream:
        row[w.M_PROMPT] += usage.prompt
        row[w.M_COMPLETION] += usage.completion
        row[w.M_CACHED] += usage.cached_prompt
        row[w.M_COST] += cost


def _recent_row(ex: Exchange, status: int) -> tuple[Any, ...]:
    usage = ex.record.usage
    ttft = ex.record.first_token_at - ex.request.received_at if ex.record.first_token_at > 0.0 else None
    return (ex.record.ended_at, ex.request.request_id, ex.request.tenant, ex.request.model[:80],
            ex.target.upstream, status, ttft,
            ex.record.ended_at - ex.request.received_at, usage.prompt if usage else None,
            usage.completion if usage else None,
            ex.record.cache_result, len(ex.record.attempts), ex.request.stream, ex.record.error_kind)


def _point(b: Second) -> dict[str, Any]:
    """The chart row of one finished second (computed once, then kept on the bucket)."""
    g = b.g
    ttft: dict[str, list[float | None]] = {}
    itl: dict[str, float | None] = {}
    for key, h in b.hists.items():
        if isinstance(key, tuple):
            if key[0] == "ttft":
                ttft[key[1]] = [_ms(h.quantile(0.5)), _ms(h.quantile(0.95))]
            elif key[0] == "itl":
                itl[key[1]] = _ms(h.quantile(0.5))
    return {"requests": int(g[w.REQ]), "errors": int(g[w.ERR]), "client_errors": int(g[w.CLIENT_ERR]),
            "prompt": int(g[w.PROMPT]), "completion": int(g[w.COMPLETION]), "cached": int(g[w.CACHED]),
            "cache_hits": sum(b.cache.get(k, 0) for k in SERVED_BY_CACHE), "inflight": b.peak_inflight,
            "ttft": ttft, "itl": itl}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)
