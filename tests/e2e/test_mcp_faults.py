"""MCP fault tests: the SDK server behind a TCP fault proxy, the SDK client through the gateway.

Attempt counts are asserted at the server: calls safe to repeat are retried after a reset before
their answer began, writes get exactly one attempt. After the answer's stream began (a reset or a
stall mid-stream), nothing can be retried: a tool with ``fallback_result`` ends the stream with its
fallback result marked ``_meta: {"x-gateway-fallback": true}``, others with a JSON-RPC error.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.test_mcp import mcp_server, mcp_session
from tests.support.fault_proxy import FaultProxy
from tests.support.mcp_server import McpServerThread
from tests.support.servers import InProcessGateway
from tests.support.until import until

__all__ = ["mcp_server"]  # the module-scoped SDK server fixture
UNAVAILABLE = "The quotes service is unavailable; try later."
MARK = {"x-gateway-fallback": True}


@pytest_asyncio.fixture
async def proxy(mcp_server: McpServerThread) -> AsyncIterator[FaultProxy]:
    await until(lambda: mcp_server.server.started, message="the MCP server did not start")
    mcp_server.calls.clear()
    mcp_server.gate.clear()
    fault = await FaultProxy("127.0.0.1", mcp_server.port).start()
    try:
        yield fault
    finally:
        mcp_server.gate["release"] = True
        await fault.close()


@pytest_asyncio.fixture
async def gw(make_gateway: Any, proxy: FaultProxy) -> InProcessGateway:
    fallback = {"fallback_result": {"text": UNAVAILABLE}}
    gateway: InProcessGateway = await make_gateway(mcp={"servers": {"quotes": {
        "url": proxy.url + "/mcp",
        "retry": {"max_attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.02},
        "tools": {"hold": {"timeout_s": 0.6, **fallback}, "get_quote": fallback,
                  "hold_write": {"timeout_s": 5}},
    }}})
    return gateway


def outcomes(gw: InProcessGateway, tool: str, outcome: str) -> float:
    labels = {"server": "quotes", "method": "tools/call", "tool": tool, "outcome": outcome}
    return gw.state.metrics.registry.get_sample_value("gateway_mcp_requests_total", labels) or 0.0


async def test_reset_before_the_answer_retries_reads_never_writes(
    gw: InProcessGateway, proxy: FaultProxy, mcp_server: McpServerThread
) -> None:
    async with mcp_session(gw.url + "/mcp/quotes") as session:
        await session.list_tools()
        assert not (await session.call_tool("get_quote", {"symbol": "A"})).is_error  # positive control
        proxy.set(reset_after_bytes=1)  # each request reaches the server; its answer is reset
        posts = mcp_server.calls["http_post"]
        quote = await session.call_tool("get_quote", {"symbol": "B"})
        read_attempts = mcp_server.calls["http_post"] - posts
        with pytest.raises(MCPError, match="reset|connect_error"):
            await session.call_tool("place_order", {"symbol": "B", "qty": 1})
        write_attempts = mcp_server.calls["http_post"] - posts - read_attempts
        proxy.clear()
    assert quote.is_error and quote.content[0].text == UNAVAILABLE  # type: ignore[union-attr]
    # POSTs that reached the server (the tool itself may or may not run before the reset cancels it)
    assert read_attempts == 3  # read-only: every attempt
    assert write_attempts == 1  # a write: exactly one attempt, although it failed
    assert mcp_server.calls["place_order"] <= 1


async def test_reset_mid_stream_ends_with_the_marked_fallback(
    gw: InProcessGateway, proxy: FaultProxy, mcp_server: McpServerThread
) -> None:
    started: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.append(progress)
        proxy.reset_all()  # the answer's stream began at the client: cut it now

    async with mcp_session(gw.url + "/mcp/quotes") as session:
        await session.list_tools()
        result = await session.call_tool("hold", {}, progress_callback=on_progress)
    assert started == [1]  # the progress event was relayed before the reset
    assert result.is_error and result.content[0].text == UNAVAILABLE  # type: ignore[union-attr]
    assert result.meta == MARK
    assert mcp_server.calls["hold"] == 1  # nothing is retried once the stream began
    await until(lambda: outcomes(gw, "hold", "fallback_reset_mid_stream") == 1)


async def test_stall_mid_stream_ends_with_the_marked_fallback_at_timeout(
    gw: InProcessGateway, mcp_server: McpServerThread
) -> None:
    started: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.append(progress)

    async with mcp_session(gw.url + "/mcp/quotes") as session:
        await session.list_tools()
        result = await session.call_tool("hold", {}, progress_callback=on_progress)  # stalls past 0.6 s
        assert started == [1] and result.is_error and result.meta == MARK
        assert result.content[0].text == UNAVAILABLE  # type: ignore[union-attr]
        mcp_server.gate["release"] = True
        assert (await session.call_tool("get_quote", {"symbol": "A"})).content[0].text == "A: 42.0"  # type: ignore[union-attr]
    assert mcp_server.calls["hold"] == 1
    await until(lambda: outcomes(gw, "hold", "fallback_timeout_mid_stream") == 1)


async def test_write_reset_mid_stream_is_an_error_and_called_once(
    gw: InProcessGateway, proxy: FaultProxy, mcp_server: McpServerThread
) -> None:
    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        proxy.reset_all()

    async with mcp_session(gw.url + "/mcp/quotes") as session:
        await session.list_tools()
        with pytest.raises(MCPError, match="cut \\(reset\\)"):
            await session.call_tool("hold_write", {}, progress_callback=on_progress)
    assert mcp_server.calls["hold_write"] == 1
    await until(lambda: outcomes(gw, "hold_write", "reset_mid_stream") == 1)
