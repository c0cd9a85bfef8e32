"""Mid-stream endings: the marked fallback result for a tool that has one, else a JSON-RPC error."""
from __future__ import annotations

import aiohttp
import orjson

from gateway.auth import ANONYMOUS
from policies.mcp import jsonrpc as rpc
from policies.mcp.call import Call
from policies.mcp.config import FallbackResult, McpServerConfig, McpToolConfig
from policies.mcp.fallback import mid_stream
from policies.mcp.upstream import McpServer, new_buckets
from policies.ratelimit.buckets import LimiterClock
from policies.resilience.breaker import CircuitBreaker
from policies.resilience.config import CircuitBreakerConfig


async def call_of(tool: str) -> Call:
    cfg = McpServerConfig(url="http://127.0.0.1:9/mcp", tools={
        "with": McpToolConfig(fallback_result=FallbackResult(text="later")),
    })
    breaker = CircuitBreaker("mcp:s", CircuitBreakerConfig(), lambda: 0.0, lambda: 0.5)
    async with aiohttp.ClientSession() as session:
        server = McpServer("s", cfg, breaker, new_buckets(LimiterClock(lambda: 0.0)), session)
    msg = rpc.message({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": tool}})
    return Call(server=server, msg=msg, raw=b"", identity=ANONYMOUS, started=0.0)


def event_json(event: bytes) -> object:
    assert event.startswith(b"event: message\ndata: ") and event.endswith(b"\n\n")
    return orjson.loads(event[len(b"event: message\ndata: "):])


async def test_a_tool_with_a_fallback_gets_it_marked() -> None:
    call = await call_of("with")
    answer = event_json(mid_stream(call, "reset"))
    assert answer == {"jsonrpc": "2.0", "id": 9, "result": {
        "content": [{"type": "text", "text": "later"}], "isError": True,
        "_meta": {"x-gateway-fallback": True},
    }}
    assert call.outcome == "fallback_reset_mid_stream"


async def test_a_tool_without_one_gets_an_error() -> None:
    call = await call_of("without")
    answer = event_json(mid_stream(call, "timeout"))
    assert answer == {"jsonrpc": "2.0", "id": 9, "error": {
        "code": rpc.UPSTREAM_ERROR, "message": "The MCP server's answer was cut (timeout).",
    }}
    assert call.outcome == "timeout_mid_stream"
