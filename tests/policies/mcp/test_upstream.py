from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import generate_latest

from gateway.telemetry.metrics import Metrics
from policies.mcp.admission import Refused
from policies.mcp.config import McpRateLimit, McpServerConfig, McpToolConfig
from policies.mcp.metrics import McpMetrics
from policies.mcp.upstream import McpServer, new_buckets
from policies.ratelimit.buckets import LimiterClock
from policies.resilience.breaker import CircuitBreaker
from policies.resilience.config import CircuitBreakerConfig


async def server(**kw: Any) -> McpServer:
    cfg = McpServerConfig(url="http://127.0.0.1:9/mcp", **kw)
    breaker = CircuitBreaker("mcp:s", CircuitBreakerConfig(), lambda: 0.0, lambda: 0.5)
    return McpServer("s", cfg, breaker, new_buckets(LimiterClock(lambda: 0.0)), aiohttp.ClientSession())


async def test_client_credentials_never_forwarded() -> None:
    s = await server(headers={"Authorization": "Bearer upstream"})
    client = CIMultiDictProxy(
        CIMultiDict(
            {
                "Authorization": "Bearer gw-key",
                "Cookie": "a=1",
                "Mcp-Session-Id": "x",
                "Accept": "application/json, text/event-stream",
                "X-Api-Key": "k",
            }
        )
    )
    sent = s.headers(client)
    assert sent == {
        "accept": "application/json, text/event-stream",
        "mcp-session-id": "x",
        "Authorization": "Bearer upstream",
    }
    await s.session.close()


async def test_rate_limit_and_concurrency() -> None:
    s = await server(rate_limit=McpRateLimit(rpm=2, max_concurrency=1, max_queue=0))
    assert await s.admission.enter(1.0) == "admitted"
    with pytest.raises(Refused, match="queue_full"):  # concurrency 1, no queue
        await s.admission.enter(1.0)
    s.admission.leave()
    assert await s.admission.enter(1.0) == "admitted"
    s.admission.leave()
    with pytest.raises(Refused, match="queue_full"):  # rpm 2 spent
        await s.admission.enter(1.0)
    await s.session.close()


async def test_tool_label_is_bounded() -> None:
    s = await server(tools={"configured": McpToolConfig()})
    s.safety["listed"] = "read_only"
    assert [s.tool_label(n) for n in ("configured", "listed", "anything", None)] == [
        "configured",
        "listed",
        "other",
        "",
    ]
    await s.session.close()


def test_method_label_is_bounded() -> None:
    m = Metrics()
    McpMetrics(m).done("s", "made/up", "", "ok", 0.01)
    text = generate_latest(m.registry).decode()
    assert 'method="other"' in text and "made/up" not in text
