"""Builds the ``/mcp/`` handler for a config (a ``ROUTE_HANDLERS`` entry).

Pools and stores outlive a config: a reload keeps each server's connection pool
(while its URL is unchanged), its breaker (in the shared resilience registry, key
``mcp:<name>``), and the caches.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from gateway.appstate import AppState
from gateway.components import MCP_HANDLER, MCP_TOOL_ROWS
from gateway.config_model import Config
from gateway.exchange import StateKey
from policies.mcp.metrics import McpMetrics
from policies.mcp.proxy import McpGateway
from policies.mcp.safety import Safety
from policies.mcp.store import TtlStore
from policies.mcp.tenants import TenantLimits
from policies.mcp.toolstats import ToolStats
from policies.mcp.upstream import MCP_PREFIX, McpServer, new_buckets, new_session
from policies.ratelimit.buckets import LimiterClock, MemoryBuckets
from policies.resilience.registry import resilience_of

if TYPE_CHECKING:
    from gateway.components import RouteHandler


@dataclass(slots=True)
class McpShared:
    """What outlives one config."""

    metrics: McpMetrics
    catalogs: TtlStore
    results: TtlStore
    buckets: MemoryBuckets
    tenants: TenantLimits
    tool_stats: ToolStats
    sessions: dict[tuple[str, str], aiohttp.ClientSession] = field(default_factory=dict)
    safety: dict[str, dict[str, Safety]] = field(default_factory=dict)  # server -> tool -> class

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()
        self.sessions.clear()


SHARED: StateKey[McpShared] = StateKey("mcp.shared")


def _shared(st: AppState) -> McpShared:
    shared = st.components.get(SHARED)
    if shared is None:
        buckets = new_buckets(LimiterClock(st.clock))
        shared = McpShared(
            metrics=McpMetrics(st.metrics),
            catalogs=TtlStore(st.clock),
            results=TtlStore(st.clock),
            buckets=buckets,
            tenants=TenantLimits(buckets),
            tool_stats=ToolStats(st.clock),
        )
        st.components.set(SHARED, shared)
        st.components.set(MCP_TOOL_ROWS, shared.tool_stats.rows)
        st.closers.append(shared.close)
    return shared


async def factory(st: AppState, config: Config) -> None:
    if not config.mcp.servers:
        st.components.pop(MCP_HANDLER)
        return
    shared = _shared(st)
    res = resilience_of(st, config)
    servers: dict[str, McpServer] = {}
    for name, cfg in config.mcp.servers.items():
        breaker = res.breaker(MCP_PREFIX + name)
        breaker.config = cfg.circuit_breaker
        session = shared.sessions.get((name, cfg.url))
        if session is None or session.closed:
            session = shared.sessions[(name, cfg.url)] = new_session(cfg)
        learned = shared.safety.setdefault(name, {})
        servers[name] = McpServer(name, cfg, breaker, shared.buckets, session, learned)
    gateway: RouteHandler = McpGateway(
        st, servers, shared.metrics, shared.catalogs, shared.results, shared.tenants,
        shared.tool_stats, random.random
    )
    st.components.set(MCP_HANDLER, gateway)
