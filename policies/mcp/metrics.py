"""The MCP proxy's Prometheus families; every label value is bounded."""
from __future__ import annotations

from gateway.telemetry.metrics import Children, Metrics

KNOWN_METHODS = frozenset({
    "initialize", "ping", "tools/list", "tools/call", "prompts/list", "prompts/get", "resources/list",
    "resources/read", "resources/templates/list", "resources/subscribe", "resources/unsubscribe",
    "completion/complete", "logging/setLevel", "notifications/initialized", "notifications/cancelled",
    "notifications/progress", "notifications/roots/list_changed", "batch", "GET", "DELETE",
})


class McpMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.requests = Children(
            metrics.counter(
                "gateway_mcp_requests_total",
                "MCP messages proxied, by outcome",
                ("server", "method", "tool", "outcome"),
            )
        )
        self.duration = Children(
            metrics.histogram(
                "gateway_mcp_request_duration_seconds", "MCP message latency", ("server", "method", "tool")
            )
        )
        self.admitted = Children(
            metrics.counter(
                "gateway_mcp_admission_total",
                "MCP rate-limit decisions (server queue, tenant limits)",
                ("server", "scope", "decision"),
            )
        )
        self.cache = Children(
            metrics.counter(
                "gateway_mcp_cache_total",
                "MCP catalog and result cache lookups",
                ("server", "kind", "result"),
            )
        )

    def admission(self, server: str, scope: str, decision: str) -> None:
        """A rate-limit decision: scope ``server`` (the queue) or ``tenant`` (the key's own limits)."""
        self.admitted(server, scope, decision).inc()
        self.metrics.decision("mcp_admission", f"{scope}_{decision}")

    def done(self, server: str, method: str, tool: str, outcome: str, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "other"
        self.requests(server, method, tool, outcome).inc()
        self.duration(server, method, tool).observe(seconds)
        self.metrics.decision("mcp", outcome)

    def cache_lookup(self, server: str, kind: str, result: str) -> None:
        self.cache(server, kind, result).inc()
        self.metrics.decision("mcp_cache", f"{kind}_{result}")
