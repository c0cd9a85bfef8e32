"""``/mcp/{server}``: a method-aware Streamable HTTP proxy to MCP servers (the entry point).

Messages are forwarded byte for byte; the policies answer only where they must. One module
per job: ``catalog`` (list caches), ``toolcall`` (result cache, span), ``attempts`` (admission,
retries, breaker), ``relay`` (streaming), ``fallback`` (graceful answers), ``plain`` (everything
else), ``cancel``, ``notices``, ``outcome`` (counters and the log line).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.appstate import AppState
from gateway.auth import Identity
from gateway.errors import LocalReply
from gateway.handler import not_found, reject
from gateway.request import read_body
from policies.mcp import batch
from policies.mcp import jsonrpc as rpc
from policies.mcp.call import Call
from policies.mcp.catalog import list_call
from policies.mcp.deps import Deps
from policies.mcp.metrics import McpMetrics
from policies.mcp.plain import forward, http_error
from policies.mcp.store import TtlStore
from policies.mcp.tenants import TenantLimits
from policies.mcp.toolcall import tool_call
from policies.mcp.toolstats import ToolStats
from policies.mcp.upstream import McpServer


class McpGateway:
    """The ``/mcp/`` handler for one config."""

    def __init__(self, st: AppState, servers: dict[str, McpServer], metrics: McpMetrics,
                 catalogs: TtlStore, results: TtlStore, tenants: TenantLimits, tool_stats: ToolStats,
                 rand: Callable[[], float]) -> None:
        self.servers = servers
        self.deps = Deps(st, metrics, catalogs, results, tenants, tool_stats, rand)

    async def __call__(self, request: web.Request, rid: str) -> web.StreamResponse:
        name = request.path[len("/mcp/"):] if request.path.startswith("/mcp/") else ""
        server = self.servers.get(name)
        if server is None:
            return not_found(rid, request)
        st, metrics = self.deps.st, self.deps.metrics
        try:
            identity = st.runtime.auth.identify(request.headers)
            if server.cfg.tenants is not None and identity.tenant not in server.cfg.tenants:
                raise LocalReply(403, f"Tenant may not use MCP server {server.name}.", code="forbidden")
        except LocalReply as reply:
            outcome = "forbidden" if reply.status == 403 else "unauthorized"
            metrics.done(server.name, request.method, "", outcome, 0.0)
            return reject(st, request, rid, reply)
        if request.method == "POST":
            return await self._post(request, rid, server, identity)
        if request.method in ("GET", "DELETE"):
            return await forward(self.deps, request, server, request.method, None)
        metrics.done(server.name, "other", "", "bad_request", 0.0)
        wrong = LocalReply(405, f"Method {request.method} not allowed on /mcp/.", code="method_not_allowed")
        return reject(st, request, rid, wrong)

    async def _post(self, request: web.Request, rid: str, server: McpServer,
                    identity: Identity) -> web.StreamResponse:
        deps = self.deps
        try:
            raw = await read_body(request, deps.st.config.server.max_body_bytes, work=deps.st.work,
                                  tenant=identity.namespace)
        except LocalReply as reply:
            deps.metrics.done(server.name, "other", "", "bad_request", 0.0)
            return reject(deps.st, request, rid, reply)
        value: Any = None
        try:
            value = rpc.parse(raw)
            if isinstance(value, list):
                batch.check(request.headers, value)
                deps.metrics.metrics.decision("mcp_batch", "allowed")
                return await forward(deps, request, server, "batch", raw)
            msg = rpc.message(value)
        except rpc.BadMessage as bad:
            batched = isinstance(value, list)
            if batched:
                deps.metrics.metrics.decision("mcp_batch", "refused")
            deps.metrics.done(server.name, "batch" if batched else "other", "", "bad_request", 0.0)
            return http_error(400, str(bad), bad.code)
        call = Call(server=server, msg=msg, raw=raw, identity=identity, started=deps.now(), request_id=rid)
        if msg.is_request and msg.method in rpc.LIST_METHODS:
            return await list_call(deps, request, call)
        if msg.is_request and msg.method == "tools/call":
            return await tool_call(deps, request, call)
        return await forward(deps, request, server, msg.method or "response", raw)
