"""The /admin/stats summary built from the live windows and the live components."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from gateway.appstate import AppState, Runtime
from gateway.auth import Authenticator
from gateway.components import BREAKER_STATES, MCP_TOOL_ROWS, QUEUE_DEPTHS
from gateway.config import parse_config
from gateway.exchange import Exchange, Usage
from gateway.routing import Router
from gateway.telemetry.live_view import (
    breaker_states,
    create_live_stats,
    make_pricer,
    mcp_tools,
    queue_depths,
    summary,
)
from gateway.telemetry.metrics import Metrics


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeBreaker:
    state: str
    since: float


def make_state(clock: Clock, **overrides: Any) -> AppState:
    raw = {"upstreams": {"mock": {"base_url": "http://127.0.0.1:1/v1"}},
           "routes": [{"match": {"model": "*"}, "upstream": "mock"}], **overrides}
    config = parse_config(raw, {})

    async def chain(ex: Exchange) -> Any:
        raise AssertionError("not called")

    runtime = Runtime(
        config=config, router=Router(config.routes), auth=Authenticator(config.auth), chain=chain
    )
    st = AppState(runtime=runtime, clock=clock)
    st.metrics = Metrics({"gpt-4o"})
    return st


def record(st: AppState, make_exchange: Callable[..., Exchange], clock: Clock, **kw: Any) -> Exchange:
    status = kw.pop("status", 200)
    usage = kw.pop("usage", Usage(prompt=1000, completion=500))
    ex = make_exchange(received_at=clock.now - 0.2, **kw)
    ex.record.status, ex.record.ended_at = status, clock.now
    ex.record.usage, ex.record.first_token_at = usage, clock.now - 0.1
    st.stats.record(ex)
    return ex


def test_summary_has_the_issue_fields(make_exchange: Callable[..., Exchange]) -> None:
    """Requests, success rate, p50/p95 latency and TTFT, cache hit rate, retries, breakers, tokens saved."""
    clock = Clock()
    st = make_state(clock, pricing={"gpt-4o": {"input": 2.0, "output": 8.0}})
    st.stats = create_live_stats(st)
    for _ in range(3):
        record(st, make_exchange, clock)
    record(st, make_exchange, clock, status=503, usage=None)
    hit = make_exchange(received_at=clock.now - 0.001, cache_result="hit", source="cache")
    hit.record.status, hit.record.ended_at, hit.record.usage = 200, clock.now, Usage(prompt=10, completion=5)
    st.stats.record(hit)
    s = summary(st.stats, st)
    assert s["requests"] == {"total": 5, "ok": 4, "client_errors": 0, "errors": 1, "success_rate": 0.8,
                             "error_rate": 0.2, "per_s": 5.0, "errors_per_s": 1.0}
    assert s["latency_ms"]["p50"] == pytest.approx(200, rel=0.05)
    assert s["ttft_ms"]["p95"] == pytest.approx(100, rel=0.05)
    assert s["cache"]["hit_rate"] == 1.0 and s["cache"]["tokens_saved"] == 15
    assert s["resilience"]["retried_requests"] == 0
    assert (
        s["breakers"] is None and s["rate_limit"]["queue_depth"] is None and s["rate_limit"]["queues"] is None
    )
    assert s["cost_usd"] == pytest.approx(3 * (1000 * 2.0 + 500 * 8.0) / 1e6)
    assert s["tokens"]["prompt"] == 3000 and s["compression"]["tokens_saved"] == 0
    assert [m["model"] for m in s["models"]] == ["gpt-4o"] and s["models"][0]["requests"] == 5
    assert s["recent"][0]["cache"] == "hit" and len(s["recent"]) == 5
    orjson.dumps(s)  # serialisable as is


def test_cost_is_none_without_pricing(make_exchange: Callable[..., Exchange]) -> None:
    """With no price table the dashboard shows n/a, not a misleading $0."""
    clock = Clock()
    st = make_state(clock)
    st.stats = create_live_stats(st)
    record(st, make_exchange, clock)
    assert summary(st.stats, st)["cost_usd"] is None


def test_pricer_prefers_the_accounting_figure(make_exchange: Callable[..., Exchange]) -> None:
    """The accounting sink's ``cost_usd`` wins; without it the price table is used;
    cache hits cost nothing."""
    st = make_state(Clock(), pricing={"gpt-4o": {"input": 1.0, "output": 2.0}})
    price = make_pricer(st)
    ex = make_exchange()
    ex.record.usage = Usage(prompt=1_000_000, completion=1_000_000)
    assert price(ex) == pytest.approx(3.0)
    ex.record.cost_usd = 0.5
    assert price(ex) == 0.5
    hit = make_exchange(source="cache")
    hit.record.usage = Usage(prompt=10, completion=10)
    assert price(hit) == 0.0


def test_breaker_states_with_time_in_state() -> None:
    """Breakers are read at read time: state (Enum or str) and seconds since the last change."""
    clock = Clock(1000.0)
    st = make_state(clock)
    assert breaker_states(st, clock.now) is None
    st.components[BREAKER_STATES] = lambda: [("mock", "open", 970.0), ("b", "closed", 10.0)]
    assert breaker_states(st, clock.now) == [{"upstream": "b", "state": "closed", "for_s": 990.0},
                                             {"upstream": "mock", "state": "open", "for_s": 30.0}]


def test_queue_depths_from_the_rate_limiter() -> None:
    """The rate limiter's admission queues are read at read time; without a limiter it is n/a."""
    st = make_state(Clock())
    assert queue_depths(st) is None

    @dataclass
    class Queue:
        depth: int

    @dataclass
    class Limiter:
        queues: dict[str, Queue]

    limiter = Limiter({"mock": Queue(3), "backup": Queue(0)})
    st.components[QUEUE_DEPTHS] = lambda: {name: q.depth for name, q in limiter.queues.items()}
    assert queue_depths(st) == {"backup": 0, "mock": 3}


def test_mcp_tools_rows_in_ms_and_na_without_servers() -> None:
    """The MCP feature's rows, read at read time; n/a (None) when no MCP server is configured."""
    st = make_state(Clock())
    st.components[MCP_TOOL_ROWS] = lambda: [("quotes", "get_quote", 3, 1, 0.0012, 0.25)]
    assert mcp_tools(st) is None  # registered, but the config has no servers (removed by a reload)
    st = make_state(Clock(), mcp={"servers": {"quotes": {"url": "http://127.0.0.1:1/mcp"}}})
    assert mcp_tools(st) is None  # no component yet
    st.components[MCP_TOOL_ROWS] = lambda: [("quotes", "get_quote", 3, 1, 0.0012, 0.25)]
    assert mcp_tools(st) == [{"server": "quotes", "tool": "get_quote", "calls": 3, "errors": 1,
                              "latency_ms": {"p50": 1.2, "p95": 250.0}}]
