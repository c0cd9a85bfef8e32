"""One usage record per request, and the totals ``GET /admin/usage`` reports.

A record is built from the finished Exchange in the request sink: plain
values only (no headers, no prompt text, no keys), so storing it can never
leak a secret. Both stores aggregate with ``aggregate`` so SQLite and Redis
give identical answers for identical records.

Token and cost totals count what upstreams processed (``source == upstream``);
an answer served from the cache is counted in ``cache_hits`` and its tokens
in ``tokens_saved`` instead, because nobody paid for them again.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gateway.components import CONTINUED_FROM
from gateway.exchange import Exchange

GROUP_BY = ("tenant", "model", "route", "upstream")
_MAX_TEXT = 200


class UsageRecord(NamedTuple):
    """One request's row. A named tuple: built in the request sink with one tuple allocation (a frozen
    dataclass sets each of its 23 fields through ``object.__setattr__``), handed to SQLite as is, and
    left untracked by the garbage collector while it waits in the queue (plain values only)."""

    ts: float  # wall-clock arrival, epoch seconds
    request_id: str
    tenant: str
    route: str
    model: str  # the model served (after route rewrites)
    requested_model: str
    upstream: str
    operation: str
    stream: bool
    prompt: int
    completion: int
    cached: int
    reasoning: int
    estimated: bool
    duration_s: float
    ttft_s: float | None
    cache_result: str
    source: str
    attempts: int
    status: int
    cost_usd: float | None
    error: str
    # The upstream whose stream broke and was finished by ``upstream`` (issue 18), "" if none; usage is then
    # the sum of both. Last, with a default: rows stored before it existed still load.
    continued_from: str = ""

    def as_row(self) -> tuple[Any, ...]:
        """A plain tuple (orjson does not serialise tuple subclasses)."""
        return tuple(self)

    @classmethod
    def from_row(cls, row: Iterable[Any]) -> UsageRecord:
        values = dict(zip(COLUMNS, row))
        values["stream"], values["estimated"] = bool(values["stream"]), bool(values["estimated"])
        return cls(**values)


COLUMNS: tuple[str, ...] = UsageRecord._fields


def record_of(ex: Exchange, wall_now: float, cost: float | None) -> UsageRecord:
    """The record of a finished request; ``wall_now`` is the wall clock at its end."""
    request, record = ex.request, ex.record
    received = request.received_at
    duration = record.ended_at - received
    if duration < 0.0:
        duration = 0.0
    usage = record.usage
    model = request.model
    continued = ex.state.get(CONTINUED_FROM)
    # Positional, in COLUMNS order (the request sink's hot path: no keyword matching).
    return UsageRecord(
        wall_now - duration, request.request_id[:_MAX_TEXT], request.identity.tenant, request.route_name,
        (ex.target.model or model)[:_MAX_TEXT], model[:_MAX_TEXT], ex.target.upstream, request.operation,
        request.stream,
        *((usage.prompt, usage.completion, usage.cached_prompt, usage.reasoning, usage.estimated)
          if usage is not None else _NO_USAGE),
        duration, (record.first_token_at - received) if record.first_token_at else None,
        record.cache_result, record.source, len(record.attempts), record.status, cost, _error(ex),
        continued[:_MAX_TEXT] if continued else "",
    )


_NO_USAGE = (0, 0, 0, 0, False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """What the MCP proxy knows of one finished ``tools/call`` (plain values; no arguments, no results)."""

    request_id: str
    tenant: str
    server: str
    tool: str
    duration_s: float
    outcome: str  # ok, cached, tool_error, fallback_timeout, ...
    attempts: int
    status: int  # the HTTP status the client got


def tool_call_record(call: ToolCall, wall_now: float) -> UsageRecord:
    """A ledger row for a tool call: upstream ``mcp:<server>``, the tool in the model column, no tokens."""
    tool = call.tool[:_MAX_TEXT]
    cached = call.outcome == "cached"
    return UsageRecord(
        ts=wall_now - call.duration_s, request_id=call.request_id[:_MAX_TEXT], tenant=call.tenant,
        route="mcp", model=tool, requested_model=tool, upstream=f"mcp:{call.server}", operation="tools/call",
        stream=False, prompt=0, completion=0, cached=0, reasoning=0, estimated=False,
        duration_s=call.duration_s, ttft_s=None, cache_result="hit" if cached else "",
        source="cache" if cached else "upstream", attempts=call.attempts, status=call.status, cost_usd=None,
        error="" if call.outcome in ("ok", "cached") else call.outcome[:_MAX_TEXT],
    )


def _error(ex: Exchange) -> str:
    """What went wrong, if anything: the failure kind, else how a stream ended when not cleanly."""
    if ex.record.error_kind:
        return ex.record.error_kind
    return ex.record.stream_outcome if ex.record.stream_outcome not in ("", "done") else ""


@dataclass(slots=True)
class _Totals:
    requests: int = 0
    errors: int = 0
    prompt: int = 0
    completion: int = 0
    cached: int = 0
    reasoning: int = 0
    estimated: int = 0
    cost: float = 0.0
    cache_hits: int = 0
    saved: int = 0
    durations: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)

    def add(self, r: UsageRecord) -> None:
        self.requests += 1
        self.errors += r.status >= 400 or r.status == 0
        self.durations.append(r.duration_s)
        if r.ttft_s is not None:
            self.ttfts.append(r.ttft_s)
        if r.source != "upstream":
            self.cache_hits += r.source == "cache"
            self.saved += r.prompt + r.completion
            return
        self.prompt += r.prompt
        self.completion += r.completion
        self.cached += r.cached
        self.reasoning += r.reasoning
        self.estimated += r.estimated
        self.cost += r.cost_usd or 0.0

    def to_json(self, key: str) -> dict[str, Any]:
        return {
            "key": key, "requests": self.requests, "errors": self.errors,
            "prompt_tokens": self.prompt, "completion_tokens": self.completion,
            "cached_prompt_tokens": self.cached, "reasoning_tokens": self.reasoning,
            "total_tokens": self.prompt + self.completion, "estimated_requests": self.estimated,
            "cost_usd": round(self.cost, 8), "cache_hits": self.cache_hits, "tokens_saved": self.saved,
            "latency_p50_s": percentile(self.durations, 0.5),
            "latency_p95_s": percentile(self.durations, 0.95),
            "ttft_p50_s": percentile(self.ttfts, 0.5), "ttft_p95_s": percentile(self.ttfts, 0.95),
        }


def aggregate(records: Iterable[UsageRecord], group_by: str) -> list[dict[str, Any]]:
    """Totals per value of ``group_by`` (one of ``GROUP_BY``), largest request count first."""
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}")
    groups: dict[str, _Totals] = {}
    for record in records:
        key = getattr(record, group_by)
        totals = groups.get(key)
        if totals is None:
            totals = groups[key] = _Totals()
        totals.add(record)
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1].requests, kv[0]))
    return [totals.to_json(key) for key, totals in ordered]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 6)
