"""The ``tools`` block: plain HTTP tool routes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.config_common import PoolConfig, TimeoutsConfig
from policies.resilience.config import CircuitBreakerConfig, RetryConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKeyParam:
    value: str
    query: str | None = None
    header: str | None = None

@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackResponse:
    status: int = 200
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)

@dataclass(frozen=True, slots=True, kw_only=True)
class ToolConfig:
    base_url: str
    api_key_param: ApiKeyParam | None = None
    headers: dict[str, str] = field(default_factory=dict)
    read_only: bool = False
    pool: PoolConfig = field(default_factory=PoolConfig)
    timeouts: TimeoutsConfig = field(
        default_factory=lambda: TimeoutsConfig(connect_s=2, first_byte_s=10, total_s=15)
    )
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    fallback_response: FallbackResponse | None = None
    cache_ttl_s: float | None = None  # read-only routes: exact cache TTL (None: cache.exact.ttl_s)
