"""Usage records and their aggregation."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.components import CONTINUED_FROM
from gateway.exchange import Attempt, Exchange, Usage
from policies.ledger.record import (
    COLUMNS,
    ToolCall,
    UsageRecord,
    aggregate,
    percentile,
    record_of,
    tool_call_record,
)


def rec(**kw: object) -> UsageRecord:
    base = {
        "ts": 100.0,
        "request_id": "r",
        "tenant": "acme",
        "route": "main",
        "model": "gpt-4o",
        "requested_model": "gpt-4o",
        "upstream": "mock",
        "operation": "chat",
        "stream": True,
        "prompt": 10,
        "completion": 5,
        "cached": 2,
        "reasoning": 1,
        "estimated": False,
        "duration_s": 1.0,
        "ttft_s": 0.2,
        "cache_result": "none",
        "source": "upstream",
        "attempts": 1,
        "status": 200,
        "cost_usd": 0.01,
        "error": "",
    }
    base.update(kw)
    return UsageRecord(**base)  # type: ignore[arg-type]


def test_record_of_exchange(make_exchange: Callable[..., Exchange]) -> None:
    """A finished exchange becomes a record with wall-clock arrival time and no request content."""
    ex = make_exchange(received_at=50.0, ended_at=52.5, first_token_at=50.5, status=200, tenant="acme",
                       route_name="main", usage=Usage(prompt=9, completion=3, estimated=True),
                       stream_outcome="client_gone")
    ex.record.attempts.append(Attempt(upstream="mock", model="gpt-4o", started=50.0))
    r = record_of(ex, wall_now=1000.0, cost=0.25)
    assert (r.ts, r.duration_s, r.ttft_s, r.prompt, r.completion, r.estimated) == (
        997.5,
        2.5,
        0.5,
        9,
        3,
        True,
    )
    assert (r.tenant, r.route, r.attempts, r.cost_usd, r.error) == ("acme", "main", 1, 0.25, "client_gone")
    assert UsageRecord.from_row(r.as_row()) == r and len(r.as_row()) == len(COLUMNS)
    assert r.continued_from == ""
    ex.state.set(CONTINUED_FROM, "primary")
    assert record_of(ex, wall_now=1000.0, cost=0.25).continued_from == "primary"
    # a row stored before the column existed still loads
    assert UsageRecord.from_row(r.as_row()[:-1]) == r


def test_record_of_without_usage(make_exchange: Callable[..., Exchange]) -> None:
    """No settled usage: zero tokens, not estimated; each value lands in its own column (the record is built
    positionally), and the record is a plain-valued row as stored."""
    ex = make_exchange(received_at=50.0, ended_at=49.0, status=502, tenant="acme", route_name="main",
                       upstream="mock", upstream_model="gpt-4o-2024", error_kind="connect_error")
    r = record_of(ex, wall_now=1000.0, cost=None)
    assert (r.prompt, r.completion, r.cached, r.reasoning, r.estimated) == (0, 0, 0, 0, False)
    assert dict(zip(COLUMNS, r.as_row())) == {
        "ts": 1000.0, "request_id": "r1", "tenant": "acme", "route": "main", "model": "gpt-4o-2024",
        "requested_model": "gpt-4o", "upstream": "mock", "operation": "chat", "stream": False, "prompt": 0,
        "completion": 0, "cached": 0, "reasoning": 0, "estimated": False, "duration_s": 0.0, "ttft_s": None,
        "cache_result": "none", "source": "upstream", "attempts": 0, "status": 502, "cost_usd": None,
        "error": "connect_error", "continued_from": ""}
    assert type(r.as_row()) is tuple


def test_aggregate_totals_and_percentiles() -> None:
    """Sums per group, nearest-rank p50/p95, cache answers counted as saved tokens not spent ones."""
    records = [rec(duration_s=float(i), ttft_s=i / 10) for i in range(1, 21)]
    records += [rec(tenant="beta", status=502, prompt=0, completion=0, ttft_s=None, cost_usd=None),
                rec(source="cache", cache_result="hit", prompt=7, completion=3)]
    groups = {g["key"]: g for g in aggregate(records, "tenant")}
    acme = groups["acme"]
    assert (
        acme["requests"],
        acme["prompt_tokens"],
        acme["completion_tokens"],
        acme["cached_prompt_tokens"],
    ) == (21, 200, 100, 40)
    assert (acme["cache_hits"], acme["tokens_saved"], acme["cost_usd"]) == (1, 10, pytest.approx(0.2))
    assert (acme["latency_p50_s"], acme["latency_p95_s"]) == (10.0, 19.0)
    assert groups["beta"]["errors"] == 1 and groups["beta"]["ttft_p50_s"] is None
    assert [g["key"] for g in aggregate(records, "tenant")] == ["acme", "beta"]


def test_group_by_is_checked() -> None:
    """Only the four documented groupings are accepted."""
    with pytest.raises(ValueError):
        aggregate([rec()], "request_id")
    assert aggregate([rec(), rec()._replace(model="x")], "model")[0]["requests"] == 1


def test_percentile() -> None:
    """Nearest rank, None for nothing."""
    assert percentile([], 0.5) is None and percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0


def test_tool_call_record() -> None:
    ok = tool_call_record(ToolCall(request_id="r1", tenant="acme", server="quotes", tool="get_quote",
                                   duration_s=0.25, outcome="ok", attempts=2, status=200), wall_now=100.0)
    assert (ok.ts, ok.upstream, ok.model, ok.operation, ok.route) == (99.75, "mcp:quotes", "get_quote",
                                                                      "tools/call", "mcp")
    assert (ok.attempts, ok.error, ok.source, ok.prompt, ok.cost_usd) == (2, "", "upstream", 0, None)
    hit = tool_call_record(ToolCall(request_id="r2", tenant="acme", server="quotes", tool="t" * 500,
                                    duration_s=0.0, outcome="cached", attempts=0, status=200), wall_now=1.0)
    assert (hit.source, hit.cache_result, len(hit.model)) == ("cache", "hit", 200)
    late = ToolCall(request_id="r3", tenant="acme", server="quotes", tool="x", duration_s=1.0,
                    outcome="fallback_timeout", attempts=1, status=200)
    failed = tool_call_record(late, 5.0)
    assert failed.error == "fallback_timeout"
    assert aggregate([ok, hit, failed], "upstream")[0]["requests"] == 3
