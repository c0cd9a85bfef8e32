"""The ``mcp`` block: MCP tool providers reached at ``/mcp/{server}``."""
from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config_common import TimeoutsConfig
from policies.resilience.config import CircuitBreakerConfig, RetryConfig

# Each of the proxy's two caches (catalogs, read-only results) keeps at most this many bytes per worker
# (``policies/mcp/store.py``; ``gateway/memory_caps.py`` counts them when MCP servers are configured).
STORE_MAX_BYTES = 8 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackResult:
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class McpToolConfig:
    read_only: bool | None = None  # None: the server's annotations decide (when trusted)
    idempotent: bool | None = None
    timeout_s: float | None = None
    cache_ttl_s: float | None = None  # read-only tools: None means the server's result_cache_ttl_s
    fallback_result: FallbackResult | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class McpRateLimit:
    rpm: int | None = None
    max_concurrency: int | None = None
    max_queue: int = 64  # calls waiting for a place beyond these limits; more are refused at once
    max_queue_wait_s: float = 10.0  # the longest wait in the queue (also bounded by the call's timeout)
    enforce: bool = True  # false: shadow mode, count what would have waited or been refused, let it through


@dataclass(frozen=True, slots=True, kw_only=True)
class McpServerConfig:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeouts: TimeoutsConfig = field(default_factory=lambda: TimeoutsConfig(connect_s=2, first_byte_s=10,
                                                                             total_s=30))
    retry: RetryConfig = field(default_factory=lambda: RetryConfig(max_attempts=3, base_delay_s=0.2))
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    rate_limit: McpRateLimit = field(default_factory=McpRateLimit)
    trust_annotations: bool = True
    catalog_ttl_s: float = 300.0
    result_cache_ttl_s: float = 0.0
    tenants: list[str] | None = None
    tools: dict[str, McpToolConfig] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class McpConfig:
    servers: dict[str, McpServerConfig] = field(default_factory=dict)
