"""Typed keys for the long-lived components that the core reads from features (``state.components``).

A feature registers its component under a key declared here when the core must reach it
without importing the feature (the dashboard's breaker and queue figures, the ``/tools/``
handler); keys only one feature uses are declared in that feature's package.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from gateway.chain import Policy
from gateway.exchange import StateKey

if TYPE_CHECKING:  # aiohttp's server is not imported by the supervisor, which reads logging's keys
    from collections.abc import Awaitable

    from aiohttp import web

    RouteHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]
# (name, state, since): since is a clock() time or None
BreakerRows = Callable[[], list[tuple[str, str, float | None]]]

TOOL_HANDLER: StateKey[RouteHandler] = StateKey("tools.handler")
MCP_HANDLER: StateKey[RouteHandler] = StateKey("mcp.handler")  # /mcp/{server}
# The dashboard's "MCP tools" rows: (server, tool, calls, errors, p50_s, p95_s) over the window.
McpToolRows = Callable[[], list[tuple[str, str, int, int, float | None, float | None]]]
MCP_TOOL_ROWS: StateKey[McpToolRows] = StateKey("mcp.tool_rows")
BREAKER_STATES: StateKey[BreakerRows] = StateKey("resilience.breaker_states")
QUEUE_DEPTHS: StateKey[Callable[[], Mapping[str, int]]] = StateKey("ratelimit.queue_depths")
# Seconds an upstream's rate-limit quota stays paused after its provider's 429 (0: not paused), as this
# process knows it; set by the rate-limit feature, read by resilience to skip paused deployments.
QuotaPaused = Callable[[str], float]
QUOTA_PAUSED: StateKey[QuotaPaused] = StateKey("ratelimit.quota_paused")
# The tool routes' read cache (a layer of the cache feature), outermost in each tool chain.
TOOL_CACHE: StateKey[Policy] = StateKey("tools.cache")
# Per request: the upstream whose committed stream broke and was finished by another (issue 18); set by
# resilience when it splices a continuation, read by the request log line and the ledger record.
CONTINUED_FROM: StateKey[str] = StateKey("resilience.continued_from")
# Per request: a tool read (GET/HEAD, or a read-only tool), safe to cache; set by the tool routes.
TOOL_READ: StateKey[bool] = StateKey("tools.read")
