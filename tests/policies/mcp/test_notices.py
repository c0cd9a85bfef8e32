"""``notifications/tools/list_changed`` drops the server's catalogs (every namespace) and learned safety."""
from __future__ import annotations

import random

import aiohttp

from gateway.telemetry.metrics import Metrics
from policies.mcp.config import McpServerConfig
from policies.mcp.deps import Deps
from policies.mcp.metrics import McpMetrics
from policies.mcp.notices import saw
from policies.mcp.store import TtlStore
from policies.mcp.tenants import TenantLimits
from policies.mcp.toolstats import ToolStats
from policies.mcp.upstream import McpServer, new_buckets
from policies.ratelimit.buckets import LimiterClock
from policies.resilience.breaker import CircuitBreaker
from policies.resilience.config import CircuitBreakerConfig


async def test_list_changed_invalidates_only_that_server() -> None:
    clock = lambda: 0.0  # noqa: E731
    buckets = new_buckets(LimiterClock(clock))
    deps = Deps(None, McpMetrics(Metrics()), TtlStore(clock), TtlStore(clock),  # type: ignore[arg-type]
                TenantLimits(buckets), ToolStats(clock), random.random)
    breaker = CircuitBreaker("mcp:s", CircuitBreakerConfig(), clock, lambda: 0.5)
    async with aiohttp.ClientSession() as session:
        server = McpServer("s", McpServerConfig(url="http://127.0.0.1:9/mcp"), breaker, buckets, session)
    server.safety["get_quote"] = "read_only"
    for key in (("s", "team-a", "tools/list", "{}"), ("s", "team-b", "tools/list", "{}"),
                ("other", "team-a", "tools/list", "{}")):
        deps.catalogs.put(key, {"tools": []}, 60)
    saw(deps, server, {"jsonrpc": "2.0", "method": "notifications/progress"})  # positive control: no effect
    assert deps.catalogs.get(("s", "team-a", "tools/list", "{}")) is not None and server.safety
    saw(deps, server, {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert deps.catalogs.get(("s", "team-a", "tools/list", "{}")) is None
    assert deps.catalogs.get(("s", "team-b", "tools/list", "{}")) is None
    assert deps.catalogs.get(("other", "team-a", "tools/list", "{}")) is not None
    assert server.safety == {}
