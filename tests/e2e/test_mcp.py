"""MCP tool providers end to end: the official SDK client, through the gateway and directly,
to an SDK server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest
import pytest_asyncio
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from tests.support.mcp_server import McpServerThread
from tests.support.servers import InProcessGateway, free_port
from tests.support.until import until

FAST = {"max_attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.05}
Session = Callable[[str], Any]


@pytest.fixture(scope="module")
def mcp_server() -> Any:
    server = McpServerThread()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def mcp_gateway(make_gateway: Any, mcp_server: McpServerThread) -> InProcessGateway:
    return await start_mcp_gateway(make_gateway, mcp_server)


async def start_mcp_gateway(make_gateway: Any, mcp_server: McpServerThread, **extra: Any) -> InProcessGateway:
    await until(lambda: mcp_server.server.started, message="the MCP server did not start")
    mcp_server.calls.clear()
    mcp_server.gate.clear()
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    gw: InProcessGateway = await make_gateway(
        mcp={
            "servers": {
                "quotes": {
                    "url": mcp_server.url,
                    "retry": FAST,
                    "result_cache_ttl_s": 0,
                    "headers": {"x-upstream-key": "server-secret"},
                    "tools": {
                        "sleepy": {
                            "timeout_s": 0.5,
                            "fallback_result": {"text": "Quotes are unavailable right now."},
                        },
                        "get_quote": {"cache_ttl_s": 30},
                    },
                },
                "down": {
                    "url": dead,
                    "retry": {"max_attempts": 1},
                    "tools": {"spare": {"fallback_result": {"text": "later"}}},
                    "circuit_breaker": {"consecutive_failures": 2, "open_s": 0.3, "max_open_s": 0.3},
                },
                "private": {"url": mcp_server.url, "tenants": ["nobody"]},
            }
        },
        **extra,
    )
    return gw


@asynccontextmanager
async def mcp_session(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def dump(result: Any) -> Any:
    return result.model_dump(exclude={"meta"})


async def scenario(session: ClientSession) -> dict[str, Any]:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    tools = await session.list_tools()
    return {
        "tools": sorted(t.name for t in tools.tools),
        "annotations": {t.name: dump(t.annotations) if t.annotations else None for t in tools.tools},
        "read": dump(await session.call_tool("get_quote", {"symbol": "IBM"})),
        "write": dump(await session.call_tool("place_order", {"symbol": "IBM", "qty": 2})),
        "structured": dump(await session.call_tool("stats", {"symbol": "IBM"})),
        "progress": dump(await session.call_tool("slow_count", {"n": 3}, progress_callback=on_progress)),
        "progress_seen": list(seen),
        "error": dump(await session.call_tool("boom", {})),
        "ping": dump(await session.send_ping()),
    }


async def test_same_results_through_the_gateway_as_directly(
    mcp_gateway: InProcessGateway, mcp_server: McpServerThread
) -> None:
    async with mcp_session(mcp_server.url) as direct:
        expected = await scenario(direct)
    async with mcp_session(mcp_gateway.url + "/mcp/quotes") as proxied:
        got = await scenario(proxied)
    assert got == expected
    assert got["progress_seen"] == [1, 2, 3] and got["error"]["is_error"] is True
    assert got["structured"]["structured_content"] == {"symbol": "IBM", "high": 50.0, "low": 40.0}
    assert mcp_server.calls["place_order"] == 2  # once directly, once through the gateway


async def test_read_only_retried_write_called_once(
    mcp_gateway: InProcessGateway, mcp_server: McpServerThread
) -> None:
    async with mcp_session(mcp_gateway.url + "/mcp/quotes") as session:
        await session.list_tools()  # the catalog tells the gateway which tools are read-only
        mcp_server.gate["fail"] = 1
        result = await session.call_tool("lookup", {"key": "a"})  # idempotent: retried after the 503
        assert not result.is_error and mcp_server.calls["http_503"] == 1 and mcp_server.calls["lookup"] == 1
        mcp_server.gate["fail"] = 2
        quote = await session.call_tool("get_quote", {"symbol": "RETRY"})  # read-only: 2 x 503, then served
        assert not quote.is_error and mcp_server.calls["http_503"] == 3 and mcp_server.calls["get_quote"] == 1
        mcp_server.gate["fail"] = 1
        with pytest.raises(MCPError, match="http_503"):  # no fallback_result: a JSON-RPC error
            await session.call_tool("place_order", {"symbol": "IBM", "qty": 1})
        assert mcp_server.calls["http_503"] == 4 and mcp_server.calls["place_order"] == 0  # one attempt


async def test_read_only_result_cached_per_tenant(
    mcp_gateway: InProcessGateway, mcp_server: McpServerThread
) -> None:
    async with mcp_session(mcp_gateway.url + "/mcp/quotes") as session:
        await session.list_tools()
        first = await session.call_tool("get_quote", {"symbol": "IBM"})
        second = await session.call_tool("get_quote", {"symbol": "IBM"})
        await session.call_tool("boom", {})
        await session.call_tool("boom", {})  # isError results are never cached
    assert (
        dump(first) == dump(second) and mcp_server.calls["get_quote"] == 1 and mcp_server.calls["boom"] == 2
    )


async def test_fallback_result_at_timeout(mcp_gateway: InProcessGateway, mcp_server: McpServerThread) -> None:
    async with mcp_session(mcp_gateway.url + "/mcp/quotes") as session:
        await session.list_tools()
        result = await session.call_tool("sleepy", {"seconds": 3})
    assert result.is_error and result.content[0].text == "Quotes are unavailable right now."  # type: ignore[union-attr]
    assert mcp_server.calls["sleepy"] == 1  # a timed-out call is not repeated


async def raw_call(
    gw: InProcessGateway, server: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.url}/mcp/{server}",
            json=body,
            headers={"accept": "application/json, text/event-stream", **(headers or {})},
        ) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "get_quote", "arguments": {}}}


async def test_breaker_opens_and_recovers(mcp_gateway: InProcessGateway) -> None:
    for _ in range(2):
        status, _, body = await raw_call(mcp_gateway, "down", CALL)
        assert status == 200 and "connect_error" in body["error"]["message"]
    _, _, body = await raw_call(mcp_gateway, "down", CALL)
    assert "circuit open" in body["error"]["message"]

    async def probing() -> bool:
        _, _, answer = await raw_call(mcp_gateway, "down", CALL)
        return "connect_error" in answer["error"]["message"]  # half-open: one probe reaches the server again

    await until(probing, timeout=5, interval=0.1)


async def test_bad_input_unknown_server_and_tenants(mcp_gateway: InProcessGateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(mcp_gateway.url + "/mcp/quotes", data=b"{not json") as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == -32700
        async with http.post(mcp_gateway.url + "/mcp/nope", json=CALL) as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "unknown_url"
        async with http.put(mcp_gateway.url + "/mcp/quotes", json=CALL) as resp:
            assert resp.status == 405
    status, _, _ = await raw_call(mcp_gateway, "private", CALL)
    assert status == 403
    status, _, body = await raw_call(
        mcp_gateway, "quotes", {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    )
    assert status == 400 and body["error"]["code"] == -32600


async def metrics_text(gw: InProcessGateway) -> str:
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as resp:
        return await resp.text()


async def test_metrics_and_credentials(mcp_gateway: InProcessGateway, mcp_server: McpServerThread) -> None:
    async with mcp_session(mcp_gateway.url + "/mcp/quotes") as session:
        await session.list_tools()
        await session.list_tools()
        await session.call_tool("get_quote", {"symbol": "X"})
    ok = 'gateway_mcp_requests_total{method="tools/call",outcome="ok",server="quotes",tool="get_quote"}'

    async def counted() -> bool:  # a call is counted when its stream ends, just after the client read it
        return ok in await metrics_text(mcp_gateway)

    await until(counted)
    text = await metrics_text(mcp_gateway)
    assert 'gateway_mcp_cache_total{kind="catalog",result="hit",server="quotes"}' in text
    assert "server-secret" not in text


async def test_cancellation_and_session_end(
    mcp_gateway: InProcessGateway, mcp_server: McpServerThread
) -> None:
    """A cancelled call is cancelled at the server; leaving the session sends DELETE through the gateway."""
    async with mcp_session(mcp_gateway.url + "/mcp/quotes") as session:
        with anyio.move_on_after(0.3):  # the SDK sends notifications/cancelled for the abandoned request
            await session.call_tool("sleepy", {"seconds": 0.4})
        await until(lambda: mcp_server.calls["sleepy"] == 1)
        assert dump(await session.call_tool("lookup", {"key": "k"}))["is_error"] is False  # still usable
    async with aiohttp.ClientSession() as http, http.get(mcp_gateway.url + "/metrics") as resp:
        text = await resp.text()
    assert 'method="DELETE"' in text and 'method="notifications/cancelled"' in text


async def test_tool_call_span(make_gateway: Any, mcp_server: McpServerThread) -> None:
    gw = await start_mcp_gateway(make_gateway, mcp_server, tracing={"enabled": True, "exporter": "memory"})
    async with mcp_session(gw.url + "/mcp/quotes") as session:
        await session.call_tool("get_quote", {"symbol": "IBM"})
    tracing = gw.state.tracer
    assert tracing is not None
    exporter: Any = tracing.exporter
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("execute_tool")]
    assert [s.name for s in spans] == ["execute_tool get_quote"]
    assert spans[0].attributes["gen_ai.operation.name"] == "execute_tool"
    assert spans[0].attributes["gen_ai.tool.name"] == "get_quote"


async def test_fallback_header_on_a_dead_server(mcp_gateway: InProcessGateway) -> None:
    body = {**CALL, "params": {"name": "spare", "arguments": {}}}
    status, headers, answer = await raw_call(
        mcp_gateway, "down", body, headers={"Authorization": "Bearer client-secret"}
    )
    assert status == 200 and headers["x-gateway-fallback"] == "true"
    assert answer == {
        "jsonrpc": "2.0",
        "id": 7,
        "result": {"content": [{"type": "text", "text": "later"}], "isError": True},
    }


async def test_batches_only_in_the_protocol_version_that_allowed_them(
    mcp_gateway: InProcessGateway, mcp_server: McpServerThread
) -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": 2, "method": "ping"}]
    status, _, body = await raw_call(mcp_gateway, "quotes", batch, {"MCP-Protocol-Version": "2025-06-18"})
    assert status == 400 and body["error"]["code"] == -32600 and "2025-06-18" in body["error"]["message"]
    assert mcp_server.calls["http_post"] == 0  # nothing forwarded
    # positive control: a 2025-03-26 batch is forwarded (the SDK server answers it in its own way)
    await raw_call(mcp_gateway, "quotes", batch, {"MCP-Protocol-Version": "2025-03-26"})
    assert mcp_server.calls["http_post"] == 1


async def test_a_ledger_record_per_tool_call(
    make_gateway: Any, mcp_server: McpServerThread, tmp_path: Any
) -> None:
    ledger = {"enabled": True, "sqlite_path": str(tmp_path / "usage.sqlite3"), "flush_interval_s": 60}
    gw = await start_mcp_gateway(make_gateway, mcp_server, ledger=ledger)
    async with mcp_session(gw.url + "/mcp/quotes") as session:
        await session.list_tools()  # not a tool call: no record
        await session.call_tool("get_quote", {"symbol": "L"})
        await session.call_tool("get_quote", {"symbol": "L"})  # cached
        await session.call_tool("sleepy", {"seconds": 3})  # the fallback at 0.5 s
    writer = gw.state.ledger
    assert writer is not None

    async def rows() -> list[dict[str, Any]]:
        return await writer.query("model", 0.0, 1e12)

    await until(lambda: _three(rows), message="three tool-call records")
    by_tool = {r["key"]: r for r in await rows()}
    assert by_tool["get_quote"]["requests"] == 2 and by_tool["get_quote"]["cache_hits"] == 1
    assert by_tool["sleepy"]["requests"] == 1 and by_tool["sleepy"]["latency_p50_s"] >= 0.5
    upstreams = await writer.query("upstream", 0.0, 1e12)
    assert [(u["key"], u["requests"]) for u in upstreams] == [("mcp:quotes", 3)]


async def _three(rows: Callable[[], Any]) -> bool:
    return sum(r["requests"] for r in await rows()) == 3


@pytest.fixture(scope="module")
def mcp_json_server() -> Any:
    server = McpServerThread(json_response=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_json_answers_feed_the_caches_and_the_catalog(
    make_gateway: Any, mcp_json_server: McpServerThread
) -> None:
    """A server answering application/json (not SSE): results cached, annotations learned, same answers."""
    await until(lambda: mcp_json_server.server.started, message="the MCP server did not start")
    gw = await make_gateway(mcp={"servers": {"quotes": {
        "url": mcp_json_server.url, "retry": FAST, "catalog_ttl_s": 60,
        "tools": {"get_quote": {"cache_ttl_s": 30}}}}})
    async with mcp_session(mcp_json_server.url) as direct:
        expected = dump(await direct.call_tool("get_quote", {"symbol": "J"}))
    async with mcp_session(gw.url + "/mcp/quotes") as session:
        await session.list_tools()
        await session.list_tools()  # a catalog hit
        first = dump(await session.call_tool("get_quote", {"symbol": "J"}))
        second = dump(await session.call_tool("get_quote", {"symbol": "J"}))
        mcp_json_server.gate["fail"] = 1
        looked = await session.call_tool("lookup", {"key": "j"})  # idempotent (learned): retried after a 503
    assert first == second == expected and mcp_json_server.calls["get_quote"] == 2  # once direct, once here
    assert not looked.is_error and mcp_json_server.calls["lookup"] == 1
    assert mcp_json_server.calls["http_503"] == 1
    hits = gw.state.metrics.registry.get_sample_value(
        "gateway_mcp_cache_total", {"server": "quotes", "kind": "catalog", "result": "hit"})
    assert hits == 1
