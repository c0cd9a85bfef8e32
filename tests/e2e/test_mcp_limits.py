"""Rate limits on MCP tool calls end to end: a key's own limits (refused at once, shadow mode) and the
server's queue (calls wait for a place instead of being refused; a full queue is refused)."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tests.e2e.test_mcp import CALL, mcp_server, mcp_session, raw_call
from tests.support.mcp_server import McpServerThread
from tests.support.servers import InProcessGateway
from tests.support.until import until

__all__ = ["mcp_server"]  # the module-scoped SDK server fixture
KEY, SHADOW = "sk-tools-team", "sk-tools-shadow"


async def gateway_for(make_gateway: Any, mcp_server: McpServerThread, **rate_limit: Any) -> InProcessGateway:
    await until(lambda: mcp_server.server.started, message="the MCP server did not start")
    mcp_server.calls.clear()
    keys = [
        {"key": KEY, "tenant": "team", "rpm": 2},
        {"key": SHADOW, "tenant": "shadow", "rpm": 1, "enforce": False},
    ]
    gw: InProcessGateway = await make_gateway(
        auth={"mode": "keys", "keys": keys},
        mcp={"servers": {"quotes": {"url": mcp_server.url, "rate_limit": rate_limit,
                                    "tools": {"sleepy": {"fallback_result": {"text": "busy"}}}}}},
    )
    return gw


def admissions(gw: InProcessGateway, scope: str, decision: str) -> float:
    value = gw.state.metrics.registry.get_sample_value(
        "gateway_mcp_admission_total", {"server": "quotes", "scope": scope, "decision": decision}
    )
    return value or 0.0


async def test_a_keys_rpm_applies_to_its_tool_calls(make_gateway: Any, mcp_server: McpServerThread) -> None:
    gw = await gateway_for(make_gateway, mcp_server)
    async with mcp_session(gw.url + "/mcp/quotes", {"Authorization": f"Bearer {KEY}"}) as session:
        await session.list_tools()
        await session.list_tools()  # list methods are not tool calls: they spend nothing
        for symbol in ("A", "B"):  # positive control: within the limit
            assert not (await session.call_tool("get_quote", {"symbol": symbol})).is_error
        with pytest.raises(MCPError, match="Too many tool calls for this key \\(rpm\\)"):
            await session.call_tool("get_quote", {"symbol": "C"})
    assert mcp_server.calls["get_quote"] == 2  # the refused call never reached the server
    assert admissions(gw, "tenant", "allowed") == 2 and admissions(gw, "tenant", "rejected") == 1
    status, headers, body = await raw_call(gw, "quotes", CALL, {"Authorization": f"Bearer {KEY}"})
    assert status == 429 and int(headers["Retry-After"]) >= 1 and body["id"] == CALL["id"]


async def test_a_shadow_key_is_counted_not_refused(make_gateway: Any, mcp_server: McpServerThread) -> None:
    gw = await gateway_for(make_gateway, mcp_server)
    async with mcp_session(gw.url + "/mcp/quotes", {"Authorization": f"Bearer {SHADOW}"}) as session:
        for symbol in ("A", "B", "C"):
            assert not (await session.call_tool("get_quote", {"symbol": symbol})).is_error
    assert mcp_server.calls["get_quote"] == 3
    assert admissions(gw, "tenant", "allowed") == 1 and admissions(gw, "tenant", "shadow_rejected") == 2


DECISIONS = ("admitted", "queued", "queue_full", "shadow_concurrency")


async def sleepy_calls(gw: InProcessGateway, n: int) -> tuple[list[str], dict[str, float]]:
    async with mcp_session(gw.url + "/mcp/quotes", {"Authorization": f"Bearer {SHADOW}"}) as session:
        await session.list_tools()  # the SDK knows the tools: the calls below are only tools/call
        before = {d: admissions(gw, "server", d) for d in DECISIONS}
        results = await asyncio.gather(*(session.call_tool("sleepy", {"seconds": 0.1}) for _ in range(n)))
    counted = {d: admissions(gw, "server", d) - before[d] for d in DECISIONS}
    return [r.content[0].text for r in results], counted  # type: ignore[union-attr]


async def test_a_full_server_queues_calls_instead_of_refusing(
    make_gateway: Any, mcp_server: McpServerThread
) -> None:
    gw = await gateway_for(make_gateway, mcp_server, max_concurrency=1, max_queue=2, max_queue_wait_s=10)
    texts, counted = await sleepy_calls(gw, 3)
    assert texts == ["woke"] * 3 and mcp_server.calls["sleepy"] == 3  # nobody refused: two waited in line
    assert counted == {"admitted": 1, "queued": 2, "queue_full": 0, "shadow_concurrency": 0}
    texts, counted = await sleepy_calls(gw, 4)  # one beyond max_queue is refused at once: its fallback
    assert sorted(texts) == ["busy", "woke", "woke", "woke"]
    assert counted == {"admitted": 1, "queued": 2, "queue_full": 1, "shadow_concurrency": 0}
    assert mcp_server.calls["sleepy"] == 6


async def test_server_queue_shadow_mode(make_gateway: Any, mcp_server: McpServerThread) -> None:
    gw = await gateway_for(make_gateway, mcp_server, max_concurrency=1, enforce=False)
    texts, counted = await sleepy_calls(gw, 3)
    assert texts == ["woke"] * 3 and mcp_server.calls["sleepy"] == 3
    assert counted == {"admitted": 1, "queued": 0, "queue_full": 0, "shadow_concurrency": 2}
