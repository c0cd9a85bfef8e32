"""Transparent forwarding: GET (the server's stream), DELETE (session end), notifications, responses."""
from __future__ import annotations

import aiohttp
from aiohttp import web

from policies.mcp import jsonrpc as rpc
from policies.mcp.deps import JSON, Deps
from policies.mcp.relay import relay
from policies.mcp.upstream import McpServer


async def forward(deps: Deps, request: web.Request, server: McpServer, method: str,
                  body: bytes | None) -> web.StreamResponse:
    started = deps.now()
    try:
        upstream = await server.send(request.method, server.headers(request.headers), body)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        deps.metrics.done(server.name, method, "", "upstream_error", deps.now() - started)
        return http_error(502, f"MCP server {server.name} is unreachable ({type(exc).__name__}).")
    try:
        return await relay(deps, request, server, upstream)
    finally:
        upstream.release()
        outcome = "ok" if upstream.status < 400 else f"http_{upstream.status // 100}xx"
        deps.metrics.done(server.name, method, "", outcome, deps.now() - started)


def http_error(status: int, text: str, code: int = rpc.UPSTREAM_ERROR) -> web.Response:
    return web.Response(status=status, body=rpc.error(None, code, text), content_type=JSON)


__all__ = ["forward", "http_error"]
