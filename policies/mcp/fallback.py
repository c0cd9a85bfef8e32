"""Graceful answers for a failed ``tools/call``: the tool's ``fallback_result``, else a JSON-RPC error.

Before the upstream's answer began, the client gets a plain JSON answer with the response header
``x-gateway-fallback: true``. After it began (a reset or a stall mid-stream), headers are gone: the
fallback result is written as the stream's last event, marked ``_meta: {"x-gateway-fallback": true}``.
"""
from __future__ import annotations

from aiohttp import web

from policies.mcp import jsonrpc as rpc
from policies.mcp.call import Call
from policies.mcp.deps import JSON, Deps
from policies.mcp.outcome import finish

FALLBACK_HEADER = "x-gateway-fallback"


def failed(deps: Deps, call: Call, outcome: str, text: str) -> web.Response:
    """The call failed before any byte reached the client."""
    fallback = call.fallback
    if call.is_tool_call and fallback is not None:
        finish(deps, call, f"fallback_{outcome}")
        body = rpc.fallback(call.msg.id, fallback.text)
        return web.Response(body=body, content_type=JSON, headers={FALLBACK_HEADER: "true"})
    finish(deps, call, outcome)
    return web.Response(body=rpc.error(call.msg.id, rpc.UPSTREAM_ERROR, text), content_type=JSON)


def mid_stream(call: Call, cause: str) -> bytes:
    """The last SSE event for a call cut after its stream began (sets the call's outcome)."""
    fallback = call.fallback if call.is_tool_call else None
    if fallback is not None:
        call.outcome = f"fallback_{cause}_mid_stream"
        return rpc.sse_event(rpc.fallback(call.msg.id, fallback.text, marked=True))
    call.outcome = f"{cause}_mid_stream"
    text = f"The MCP server's answer was cut ({cause})."
    return rpc.sse_event(rpc.error(call.msg.id, rpc.UPSTREAM_ERROR, text))
