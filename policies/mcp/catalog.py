"""The catalog cache: ``tools/list``, ``prompts/list``, ``resources/list`` answers per server and tenant
namespace for ``catalog_ttl_s``; a ``tools/list`` answer also teaches the server's tool safety."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from policies.mcp import jsonrpc as rpc
from policies.mcp.attempts import forward_call
from policies.mcp.call import Call, Tap
from policies.mcp.deps import JSON, Deps
from policies.mcp.outcome import finish
from policies.mcp.safety import catalog_safety
from policies.mcp.store import catalog_key


async def list_call(deps: Deps, request: web.Request, call: Call) -> web.StreamResponse:
    server, msg = call.server, call.msg
    key = catalog_key(server.name, call.namespace, msg.method or "", msg.params)
    cached = deps.catalogs.get(key)
    if cached is not None:
        deps.metrics.cache_lookup(server.name, "catalog", "hit")
        finish(deps, call, "cached")
        return web.Response(body=rpc.result(msg.id, cached), content_type=JSON)
    deps.metrics.cache_lookup(server.name, "catalog", "miss")
    return await forward_call(deps, request, call, _store(deps, call, key))


def _store(deps: Deps, call: Call, key: tuple[str, ...]) -> Tap:
    def tap(message: Any) -> None:
        if not (isinstance(message, dict) and message.get("id") == call.msg.id and "result" in message):
            return
        result = message["result"]
        if call.msg.method == "tools/list" and isinstance(result, dict):
            call.server.safety.update(catalog_safety(result))
        ttl = call.server.cfg.catalog_ttl_s
        if not (isinstance(result, dict) and result.get("nextCursor")) and ttl > 0 \
                and not deps.catalogs.put(key, result, ttl):
            deps.metrics.cache_lookup(call.server.name, "catalog", "not_stored_too_large")

    return tap
