"""Usage records and their aggregation."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from gateway.exchange import Attempt, Exchange, Usage
from policies.ledger.record import COLUMNS, UsageRecord, aggregate, percentile, record_of


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
    assert aggregate([rec(), replace(rec(), model="x")], "model")[0]["requests"] == 1


def test_percentile() -> None:
    """Nearest rank, None for nothing."""
    assert percentile([], 0.5) is None and percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
