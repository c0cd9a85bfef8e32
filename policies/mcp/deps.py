"""What every part of the ``/mcp/`` proxy reads: the app state, metrics and the two caches."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.appstate import AppState
from policies.mcp.metrics import McpMetrics
from policies.mcp.store import TtlStore
from policies.mcp.tenants import TenantLimits
from policies.mcp.toolstats import ToolStats

JSON = "application/json"
SSE = "text/event-stream"


@dataclass(frozen=True, slots=True)
class Deps:
    st: AppState
    metrics: McpMetrics
    catalogs: TtlStore
    results: TtlStore
    tenants: TenantLimits
    tool_stats: ToolStats
    rand: Callable[[], float]

    def now(self) -> float:
        return self.st.clock()
