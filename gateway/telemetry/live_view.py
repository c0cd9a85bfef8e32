"""Turn the live windows into the JSON summary served by ``/admin/stats`` and its stream.

Live state that is not a per-request figure (circuit breakers, rate-limit
queues, requests in flight) is read from the components that own it at read
time, so the hot path carries none of it. Components that are absent (a
feature not configured) show as ``None``, which the dashboard prints as "n/a".
"""
from __future__ import annotations

from typing import Any

from gateway.appstate import AppState
from gateway.components import BREAKER_STATES, MCP_TOOL_ROWS, QUEUE_DEPTHS
from gateway.exchange import Exchange
from gateway.telemetry import live_window as w
from gateway.telemetry.live import SERVED_BY_CACHE, LiveStats, Pricer
from gateway.telemetry.live_fleet import FleetView
from gateway.telemetry.live_window import Hist, Second
from gateway.telemetry.pricing import cost_usd, price_for

MAX_LISTED = 100  # models, tenants, breakers shown; all are bounded sets already


def create_live_stats(state: AppState) -> LiveStats:
    """The process's live stats, wired to the state's clock, model bounds, prices and drain set."""
    # bound methods, not lambdas around them: a Python frame less each, per request (neither is replaced)
    return LiveStats(clock=state.clock, bounded_model=state.metrics.bounded_model,
                     pricer=make_pricer(state), inflight=state.lifecycle.active.__len__)


def make_pricer(state: AppState) -> Pricer:
    """Cost in USD of one answer: the record's settled cost (``finalize``), else ``pricing:``.

    Reading the settled figure keeps the dashboard, ``/metrics`` and the ledger in agreement.
    Prices are read at call time so reloads apply.
    """

    def price(ex: Exchange) -> float:
        if ex.record.cost_usd is not None:
            return ex.record.cost_usd
        pricing = state.config.pricing
        if not pricing or ex.record.usage is None or ex.record.source != "upstream":
            return 0.0
        found = price_for(pricing, ex.target.model, ex.request.model)
        return cost_usd(found, ex.record.usage) if found is not None else 0.0

    return price


def summary(stats: LiveStats, state: AppState, *, exact: bool = True, fleet: FleetView | None = None,
            banner: str | None = None) -> dict[str, Any]:
    """The live summary: totals over the window, rates over the last minute, live component state.

    ``exact=False`` (the once-a-second stream) may reuse window totals computed earlier in the same second.
    ``fleet``: the merged figures of every worker/replica (``live_fleet``); without it, this process's.
    """
    t = fleet.window if fleet is not None else stats.window(exact=exact)
    g = t.g
    now = stats.clock()
    uptime = now - stats.started_at
    span = max(1.0, min(60.0, uptime))
    last = fleet.last60 if fleet is not None else stats.recent_sums(60)
    total = int(g[w.REQ])
    out = {
        **scopes(state, fleet, banner),
        "generated_at": round(stats.wall(), 3),
        "window_s": stats.window_s,
        "covered_s": round(min(float(stats.window_s), uptime), 1),
        "inflight": fleet.inflight if fleet is not None else stats.inflight(),
        "requests": {"total": total, "ok": int(g[w.OK]), "client_errors": int(g[w.CLIENT_ERR]),
                     "errors": int(g[w.ERR]), "success_rate": _ratio(g[w.OK], total),
                     "error_rate": _ratio(g[w.ERR], total), "per_s": round(last[w.REQ] / span, 3),
                     "errors_per_s": round(last[w.ERR] / span, 3)},
        "latency_ms": _quantiles(t.hists.get("lat")),
        "ttft_ms": _quantiles(t.hists.get("ttft")),
        "itl_ms": _quantiles(t.hists.get("itl")),
        "tokens": {"prompt": int(g[w.PROMPT]), "completion": int(g[w.COMPLETION]), "cached": int(g[w.CACHED]),
                   "reasoning": int(g[w.REASONING]),
                   "per_s": {k: round(last[i] / span, 2) for k, i in
                             (("prompt", w.PROMPT), ("completion", w.COMPLETION), ("cached", w.CACHED))}},
        "cost_usd": round(max(0.0, g[w.COST]), 6) if state.config.pricing else None,
        "models": _models(t),
        "tenants": _groups(t.tenants, "tenant"),
        "cache": _cache(t),
        "compression": {"requests": int(g[w.COMP_REQ]), "tokens_saved": int(g[w.SAVED_COMP])},
        "resilience": {"retried_requests": int(g[w.RETRIED]), "extra_attempts": int(g[w.EXTRA_ATTEMPTS]),
                       "fallbacks": int(g[w.FALLBACKS]), "timeouts": int(g[w.TIMEOUTS]),
                       "hedged": int(g[w.HEDGED])},
        "breakers": breaker_states(state, now),
        "rate_limit": _rate_limit(t, state),
        "mcp_tools": mcp_tools(state),
        "recent": recent_rows(stats, now),
    }
    return out


def scopes(state: AppState, fleet: FleetView | None, banner: str | None) -> dict[str, Any]:
    """Which processes each figure covers: ``worker`` (this one), ``host`` (its workers), ``fleet``.

    Window figures cover the fleet view's scope; breaker states are shared whenever a backend answers;
    queues, the recent requests and the chart rows are this worker's.
    """
    scope = fleet.scope if fleet is not None else "worker"
    breakers = scope if fleet is not None else "worker"
    names = ("requests", "latency_ms", "ttft_ms", "itl_ms", "tokens", "cost_usd", "models", "tenants",
             "cache", "compression", "resilience", "inflight")
    per_figure = {name: scope for name in names}
    per_figure.update(breakers=breakers, rate_limit=scope, queues="worker", recent="worker", series="worker")
    replicas = fleet.replicas if fleet is not None else []
    return {"scope": scope, "scopes": per_figure, "replicas": replicas,
            "shared": {"local_only": fleet is None, "banner": banner}}


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def _quantiles(h: Hist | None) -> dict[str, float | None]:
    if h is None:
        return {"p50": None, "p95": None}
    return {"p50": _ms(h.quantile(0.5)), "p95": _ms(h.quantile(0.95))}


def _models(t: Second) -> list[dict[str, Any]]:
    rows = _groups(t.models, "model")
    for row in rows:
        name = row["model"]
        ttft, itl, lat = t.hists.get(("ttft", name)), t.hists.get(("itl", name)), t.hists.get(("lat", name))
        row["ttft_ms"], row["itl_ms"], row["latency_ms"] = _quantiles(ttft), _quantiles(itl), _quantiles(lat)
    return rows


def _groups(groups: dict[str, list[float]], label: str) -> list[dict[str, Any]]:
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1][w.M_REQ], kv[0]))[:MAX_LISTED]
    return [{label: name, "requests": int(v[w.M_REQ]), "errors": int(v[w.M_ERR]),
             "prompt_tokens": int(v[w.M_PROMPT]), "completion_tokens": int(v[w.M_COMPLETION]),
             "cached_tokens": int(v[w.M_CACHED]), "cost_usd": round(max(0.0, v[w.M_COST]), 6)}
            for name, v in ordered]


def _cache(t: Second) -> dict[str, Any]:
    """Hit rate over the requests the cache looked at (not ``none``, not ``bypass``), per kind."""
    by_result = {k: int(v) for k, v in sorted(t.cache.items())}
    lookups = sum(v for k, v in by_result.items() if k not in ("none", "bypass"))
    hits = sum(by_result.get(k, 0) for k in SERVED_BY_CACHE)
    return {"lookups": lookups, "hits": hits, "hit_rate": _ratio(hits, lookups), "by_result": by_result,
            "rate_by_kind": {k: _ratio(by_result.get(k, 0), lookups) for k in sorted(SERVED_BY_CACHE)},
            "tokens_saved": int(t.g[w.SAVED_CACHE])}


def breaker_states(state: AppState, now: float) -> list[dict[str, Any]] | None:
    """Circuit breakers as the resilience feature exposes them (``BREAKER_STATES``)."""
    rows = state.components.get(BREAKER_STATES)
    if rows is None:
        return None
    out: list[dict[str, Any]] = []
    for name, value, since in sorted(rows(), key=lambda row: row[0])[:MAX_LISTED]:
        for_s = round(max(0.0, now - since), 1) if since is not None else None
        out.append({"upstream": name, "state": value, "for_s": for_s})
    return out


def _rate_limit(t: Second, state: AppState) -> dict[str, Any]:
    """Queues right now (from the rate limiter) and deliberate waits over the window.

    ``ex.record.waited_s`` is every deliberate wait of a request: the upstream rate-limit queue and retry
    backoff alike, so the wait figures say "waited", not "was rate limited".
    """
    q = _quantiles(t.hists.get("wait"))
    queues = queue_depths(state)
    return {"waited_requests": int(t.g[w.WAITED]), "wait_total_s": round(max(0.0, t.g[w.WAIT_S]), 3),
            "wait_p50_ms": q["p50"], "wait_p95_ms": q["p95"],
            "queue_depth": None if queues is None else sum(queues.values()), "queues": queues}


def mcp_tools(state: AppState) -> list[dict[str, Any]] | None:
    """Calls, errors and latency per MCP tool over the window; None when no MCP server is configured."""
    rows = state.components.get(MCP_TOOL_ROWS)
    if rows is None or not state.config.mcp.servers:
        return None
    return [{"server": server, "tool": tool, "calls": calls, "errors": errors,
             "latency_ms": {"p50": _ms(p50), "p95": _ms(p95)}}
            for server, tool, calls, errors, p50, p95 in rows()[:MAX_LISTED]]


def queue_depths(state: AppState) -> dict[str, int] | None:
    """Requests waiting in each upstream's admission queue now; None when no rate limiter runs."""
    depths = state.components.get(QUEUE_DEPTHS)
    if depths is None:
        return None
    return dict(sorted(depths().items())[:MAX_LISTED])


def recent_rows(stats: LiveStats, now: float) -> list[dict[str, Any]]:
    """The last requests, newest first: metadata only, never prompt or answer text."""
    offset = stats.wall() - now
    out = []
    for (ended, rid, tenant, model, upstream, status, ttft, duration, prompt, completion, cache, attempts,
         stream, error) in reversed(stats.recent):
        out.append({"time": round(ended + offset, 3), "request_id": rid, "tenant": tenant, "model": model,
                    "upstream": upstream, "status": status, "ttft_ms": _ms(ttft),
                    "duration_ms": _ms(duration),
                    "prompt_tokens": prompt, "completion_tokens": completion, "cache": cache,
                    "attempts": attempts, "stream": stream, "error": error})
    return out
