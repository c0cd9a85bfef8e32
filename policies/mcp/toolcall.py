"""``tools/call``: classify the tool, answer from the read-only result cache, else forward in a span."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from policies.mcp import jsonrpc as rpc
from policies.mcp.attempts import forward_call
from policies.mcp.call import Call, Tap
from policies.mcp.deps import JSON, Deps
from policies.mcp.outcome import finish
from policies.mcp.safety import classify
from policies.mcp.span import traced
from policies.mcp.store import result_key
from policies.mcp.tenants import TenantVerdict


async def tool_call(deps: Deps, request: web.Request, call: Call) -> web.StreamResponse:
    server, tool = call.server, call.msg.tool or ""
    call.safety = classify(tool, server.cfg, server.safety.get(tool))
    override = call.override
    ttl = cache_ttl(call)
    key = result_key(server.name, call.namespace, tool, call.msg.params.get("arguments") or {})
    if ttl > 0:
        hit = deps.results.get(key)
        deps.metrics.cache_lookup(server.name, "result", "hit" if hit is not None else "miss")
        if hit is not None:
            finish(deps, call, "cached")
            return web.Response(body=rpc.result(call.msg.id, hit), content_type=JSON)
    verdict = deps.tenants.admit(call.identity)
    if verdict.decision != "unlimited":
        deps.metrics.admission(server.name, "tenant", verdict.decision)
    if verdict.decision == "rejected":
        return tenant_refused(deps, call, verdict)
    timeout = override.timeout_s if override and override.timeout_s else server.cfg.timeouts.total_s
    call.deadline = call.started + timeout
    store = _store(deps, call, key, ttl)
    try:
        return await traced(deps, request, call, lambda: forward_call(deps, request, call, store))
    finally:
        verdict.release()


def tenant_refused(deps: Deps, call: Call, verdict: TenantVerdict) -> web.Response:
    call.status = 429
    finish(deps, call, "tenant_rate_limited")
    text = f"Too many tool calls for this key ({verdict.limit}); retry after {verdict.retry_after_s} s."
    body = rpc.error(call.msg.id, rpc.UPSTREAM_ERROR, text)
    headers = {"retry-after": str(verdict.retry_after_s)}
    return web.Response(status=429, body=body, content_type=JSON, headers=headers)


def cache_ttl(call: Call) -> float:
    """How long this call's result may be cached: read-only tools only."""
    if call.safety != "read_only":
        return 0.0
    override = call.override
    if override is not None and override.cache_ttl_s is not None:
        return override.cache_ttl_s
    return call.server.cfg.result_cache_ttl_s


def _store(deps: Deps, call: Call, key: tuple[str, ...], ttl: float) -> Tap:
    def tap(message: Any) -> None:
        if not (isinstance(message, dict) and message.get("id") == call.msg.id):
            return
        if "error" in message:
            call.outcome = "rpc_error"
        elif "result" in message:
            result = call.result = message["result"]
            if isinstance(result, dict) and result.get("isError"):
                call.outcome = "tool_error"
            elif ttl > 0 and not deps.results.put(key, result, ttl):
                deps.metrics.cache_lookup(call.server.name, "result", "not_stored_too_large")

    return tap
