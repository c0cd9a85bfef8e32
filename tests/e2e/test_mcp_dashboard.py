"""The dashboard's "MCP tools" panel in a real headless Chromium, after real MCP traffic through the gateway.

The SDK server and client as in test_mcp.py; figures on the page must match ``/admin/stats``; the tool
column only shows names from the server's catalog or config (a made-up name is counted as ``other``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.components import BREAKER_STATES
from tests.e2e.conftest import GatewayFactory
from tests.e2e.test_dashboard import ADMIN_KEY, CHROMIUM, CHROMIUM_ARGS, admin_stats
from tests.e2e.test_mcp import mcp_server, mcp_session
from tests.support.mcp_server import McpServerThread
from tests.support.servers import InProcessGateway
from tests.support.until import until

__all__ = ["mcp_server"]  # the module-scoped SDK server fixture
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="chromium is not installed: apt-get install chromium (see .ci/run)")
QUOTES, BOOMS = 3, 2


async def drive(gw: InProcessGateway) -> None:
    async with mcp_session(gw.url + "/mcp/quotes") as session:
        await session.list_tools()
        for i in range(QUOTES):
            await session.call_tool("get_quote", {"symbol": f"S{i}"})
        for _ in range(BOOMS):
            await session.call_tool("boom", {})  # isError results: errors
        made_up = await session.call_tool("made_up_tool_x9", {})  # not in the catalog: label "other"
        assert made_up.is_error


def row_count(stats: dict[str, Any]) -> int:
    return sum(r["calls"] for r in stats["mcp_tools"] or [])


async def test_mcp_tools_panel_in_chromium(make_gateway: GatewayFactory, mcp_server: McpServerThread) -> None:
    from playwright.async_api import async_playwright

    await until(lambda: mcp_server.server.started, message="the MCP server did not start")
    mcp = {"servers": {"quotes": {"url": mcp_server.url}}}
    gw = await make_gateway(admin={"api_key": ADMIN_KEY}, mcp=mcp)
    await drive(gw)
    calls = QUOTES + BOOMS + 1

    async def all_counted() -> bool:
        return row_count(await admin_stats(gw)) == calls

    await until(all_counted, message="every tool call on /admin/stats")
    expected = {(r["server"], r["tool"]): r for r in (await admin_stats(gw))["mcp_tools"]}
    assert set(expected) == {("quotes", "get_quote"), ("quotes", "boom"), ("quotes", "other")}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            resp = await page.goto(f"{gw.url}/admin/dashboard?key={ADMIN_KEY}")
            assert resp is not None and resp.status == 200
            await page.wait_for_selector('#mcp-tools tr[data-tool="quotes/get_quote"]', timeout=15000)
            quote = page.locator('#mcp-tools tr[data-tool="quotes/get_quote"] td')
            assert [await quote.nth(i).inner_text() for i in (2, 3)] == [str(QUOTES), "0"]
            boom = page.locator('#mcp-tools tr[data-tool="quotes/boom"] td')
            assert [await boom.nth(i).inner_text() for i in (2, 3)] == [str(BOOMS), str(BOOMS)]
            p95 = await quote.nth(5).inner_text()
            assert re.fullmatch(r"[\d.,]+ ms", p95), p95
            assert await page.locator('#mcp-tools tr[data-tool="quotes/other"]').count() == 1
            assert "made_up_tool_x9" not in await page.content()  # bounded: never a client's made-up name
            assert not await page.locator('[data-stat="mcp-na"]').is_visible()
            if gw.state.components.get(BREAKER_STATES) is not None:
                await page.locator('#breakers tr[data-upstream="mcp:quotes"]').wait_for(timeout=5000)
            assert not errors, errors
        finally:
            await browser.close()


async def test_without_mcp_servers_the_panel_says_na(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(admin={"api_key": ADMIN_KEY})
    assert (await admin_stats(gw))["mcp_tools"] is None
