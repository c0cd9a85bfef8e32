"""One posted JSON-RPC message on its way through the proxy: what the policies decided about it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.auth import Identity
from policies.mcp import jsonrpc as rpc
from policies.mcp.config import FallbackResult, McpToolConfig
from policies.mcp.safety import Safety
from policies.mcp.upstream import McpServer

Tap = Callable[[Any], None]  # sees each JSON-RPC message of the upstream's answer


@dataclass(slots=True)
class Call:
    server: McpServer
    msg: rpc.Message
    raw: bytes
    identity: Identity
    started: float
    request_id: str = ""
    safety: Safety = "write"
    deadline: float = 0.0
    outcome: str = "ok"
    attempts: int = 0
    status: int = 200
    result: Any = field(default=None)
    answered: bool = False  # the upstream's answer to this message went by (a later cut changes nothing)

    def saw(self, message: Any) -> None:
        if isinstance(message, dict) and message.get("id") == self.msg.id and (
            "result" in message or "error" in message
        ):
            self.answered = True

    @property
    def namespace(self) -> str:
        return self.identity.namespace

    @property
    def tenant(self) -> str:
        return self.identity.tenant

    @property
    def override(self) -> McpToolConfig | None:
        return self.server.cfg.tools.get(self.msg.tool or "")

    @property
    def fallback(self) -> FallbackResult | None:
        override = self.override
        return override.fallback_result if override is not None else None

    @property
    def is_tool_call(self) -> bool:
        return self.msg.method == "tools/call"
