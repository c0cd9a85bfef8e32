"""A real MCP server built with the official SDK (``MCPServer``), served on loopback by uvicorn in a thread.

Tools: ``get_quote`` (read-only), ``place_order`` (a write), ``lookup`` (idempotent), ``stats``
(structured content), ``slow_count`` (reports progress), ``boom`` (errors), ``sleepy`` (stalls),
``hold``/``hold_write`` (read-only/write: the answer's stream begins, then stalls until released).
``calls`` counts executions per tool, so tests assert attempt counts at the server (and ``http_post``
every POST that arrived).
"""
from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from pydantic import BaseModel

from tests.support.servers import free_port


class Stats(BaseModel):
    symbol: str
    high: float
    low: float


def build(calls: Counter[str], gate: dict[str, Any]) -> MCPServer:
    server = MCPServer("quotes")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def get_quote(symbol: str) -> str:
        calls["get_quote"] += 1
        return f"{symbol}: 42.0"

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
    def place_order(symbol: str, qty: int) -> str:
        calls["place_order"] += 1
        return f"ordered {qty} {symbol}"

    @server.tool(annotations=ToolAnnotations(idempotent_hint=True, destructive_hint=False))
    def lookup(key: str) -> str:
        calls["lookup"] += 1
        return f"value of {key}"

    @server.tool()
    def stats(symbol: str) -> Stats:
        calls["stats"] += 1
        return Stats(symbol=symbol, high=50.0, low=40.0)

    @server.tool()
    async def slow_count(n: int, ctx: Context) -> str:
        calls["slow_count"] += 1
        for i in range(n):
            await ctx.report_progress(i + 1, n, f"step {i + 1}")
        return f"counted {n}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def boom() -> str:
        calls["boom"] += 1
        raise ValueError("boom failed")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def sleepy(seconds: float) -> str:
        calls["sleepy"] += 1
        await asyncio.sleep(seconds)
        return "woke"

    add_hold_tools(server, calls, gate)
    return server


def add_hold_tools(server: MCPServer, calls: Counter[str], gate: dict[str, Any]) -> None:
    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def hold(ctx: Context) -> str:
        return await _hold("hold", ctx)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
    async def hold_write(ctx: Context) -> str:
        return await _hold("hold_write", ctx)

    async def _hold(name: str, ctx: Context) -> str:
        """Begin the answer's stream (a progress event), then hold it until ``gate["release"]`` (5 s max)."""
        calls[name] += 1
        await ctx.report_progress(1, 2, "started")
        for _ in range(500):
            if gate.get("release"):
                break
            await asyncio.sleep(0.01)
        return "released"


class FailFirst:
    """ASGI middleware: answer 503 to the next ``gate["fail"]`` POSTs (counted in ``calls["http_503"]``)."""

    def __init__(self, app: Any, calls: Counter[str], gate: dict[str, Any]) -> None:
        self.app, self.calls, self.gate = app, calls, gate

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.calls["http_post"] += 1  # every POST that reached the server
        if scope["type"] == "http" and scope["method"] == "POST" and self.gate.get("fail", 0) > 0:
            self.gate["fail"] -= 1
            self.calls["http_503"] += 1
            await send({"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


class McpServerThread:
    """Run the SDK server's Streamable HTTP app with uvicorn in a daemon thread."""

    def __init__(self, json_response: bool = False) -> None:
        """``json_response``: answer requests with ``application/json`` instead of SSE streams."""
        self.calls: Counter[str] = Counter()
        self.gate: dict[str, Any] = {}
        self.port = free_port()
        mcp_app = build(self.calls, self.gate).streamable_http_app(json_response=json_response)
        app = FailFirst(mcp_app, self.calls, self.gate)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
