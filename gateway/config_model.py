"""The configuration schema: frozen dataclasses, one per YAML block.

The core blocks live here; each feature's block lives in its own package
(``policies/<feature>/config.py``: plain dataclasses that import nothing of the
feature's code) and is composed here, so ``gateway check-config`` still reads a
file as one unit and lists every problem. Field names are the YAML keys;
defaults are the documented defaults. Value rules are checked by each feature's
``validate.problems`` (listed in ``policies/config_checks.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.config_common import PoolConfig, TimeoutsConfig
from policies.cache.config import CacheConfig
from policies.compression.budgets_config import BudgetsConfig
from policies.compression.config import CompressionConfig
from policies.ledger.config import LedgerConfig
from policies.mcp.config import McpConfig
from policies.ratelimit.config import RateLimitConfig
from policies.resilience.config import CircuitBreakerConfig, HedgeConfig, RetryConfig
from policies.tools.config import ToolConfig
from policies.tracing.config import TracingConfig
from policies.usage.config import PriceConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    max_body_bytes: int = 64 * 1024 * 1024  # multimodal requests (base64 images) reach tens of MB
    drain_s: float = 25.0
    grace_s: float = 2.0  # after SIGTERM, keep accepting new connections this long
    workers: int | None = None  # None: one per available core (deployment issue)
    access_log: bool = False
    log_level: str = "info"
    max_header_bytes: int = 16384
    # Load shedding: proxied requests in flight in this process beyond which new ones get 503 + Retry-After
    # at once (before their body is read), so overload costs the client a fast retry, not our memory.
    max_inflight: int = 4096
    # The whole request body must arrive within this; a trickling client gets 408.
    body_timeout_s: float = 60.0
    # Off-loop work (token counting, compression, embedder input, decoding bodies over 256 KiB): worker
    # threads, and the time a request waits for its share before it takes an estimate instead (a body
    # not decoded in time: 503 gateway_busy; docs/reliability.md).
    work_threads: int = 2
    # Per client (its key, else its address), before max_inflight: requests in flight, bodies being read
    # (429 + Retry-After over either); a request head must be complete within header_timeout_s (408).
    client_max_inflight: int = 1024
    client_max_reading: int = 16
    header_timeout_s: float = 10.0
    work_budget_s: float = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamLimits:
    """What the provider accepts in one request (OpenAI's figures); refused with a 400 before any work."""

    embeddings_max_inputs: int = 2048
    embeddings_max_tokens: int = 300_000


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamConfig:
    base_url: str
    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    provider: str = "openai"  # gen_ai.provider.name in traces
    pool: PoolConfig = field(default_factory=PoolConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    rate_limit: RateLimitConfig | None = None
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    list_models: bool = True  # include this upstream's /models in GET /v1/models
    # auth.mode keys without api_key: forward the client's gateway key to this upstream (a check-config
    # error unless set on purpose; the provider then sees the tenant's key).
    forward_client_key: bool = False
    limits: UpstreamLimits = field(default_factory=UpstreamLimits)
    # How this upstream can finish another one's broken stream (issue 18): an assistant prefill message,
    # vLLM's continue_final_message, or not at all.
    continuation: Literal["prefill", "continue_final_message", "none"] = "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    model: str = "*"  # exact name or glob


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackConfig:
    upstream: str
    model: str | None = None


# Value ranges (temperature, top_p, n, max_*tokens...): the provider judges them (``provider``), the gateway
# answers 400 itself (``strict``), or counts what it would refuse and forwards (``shadow``). gateway/ranges.py
ValidateMode = Literal["provider", "strict", "shadow"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentConfig:
    """One deployment of the route's model (issue 18: routing across deployments)."""

    upstream: str
    model: str | None = None
    weight: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """A route; the optional policy blocks are already merged over the global ones."""

    match: RouteMatch = field(default_factory=RouteMatch)
    upstream: str
    name: str | None = None  # metric label; defaults to the match pattern
    model: str | None = None
    fallbacks: list[FallbackConfig] = field(default_factory=list)
    # Larger-window models for a provider 400 context_length_exceeded (issue 18), tried in order.
    context_fallbacks: list[FallbackConfig] = field(default_factory=list)
    hedge: HedgeConfig | None = None  # a late first token starts the request on the next target too
    # A committed chat stream that breaks is finished by a fallback; None: on when a fallback can continue.
    continue_on_break: bool | None = None
    # Several deployments of the model, balanced (least in-flight x latency EWMA, power of two choices);
    # ``upstream`` is one of them (added with weight 1 if not listed). Fallbacks come after all of them.
    targets: list[DeploymentConfig] = field(default_factory=list)
    affinity: Literal["none", "prefix"] = "none"  # prefix: a long shared prompt prefix keeps its deployment
    cache: CacheConfig | None = None
    compression: CompressionConfig | None = None
    budgets: BudgetsConfig | None = None
    retry: RetryConfig | None = None
    timeouts: TimeoutsConfig | None = None
    validate: ValidateMode = "provider"

    @property
    def label(self) -> str:
        return self.name or self.match.model


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    timeout_ms: float = 50.0
    replicas_hint: int = 1
    key_prefix: str = "gw:"


# Provider endpoints that keep objects (files, batches, stored responses...): the first path segment under
# /v1. In keys mode passthrough never reaches them unless a key lists the family in ``passthrough``.
STATEFUL_ENDPOINTS = frozenset({
    "files", "uploads", "batches", "responses", "vector_stores", "fine_tuning", "fine-tunes", "assistants",
    "threads", "conversations", "containers", "evals",
})


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthKeyConfig:
    key: str
    tenant: str
    # Stateful provider endpoints (STATEFUL_ENDPOINTS) this tenant may reach through passthrough; also needed
    # for previous_response_id on /v1/responses. Objects there are the provider account's, shared by every
    # tenant granted the same family: grant only tenants that may see each other's objects.
    passthrough: list[str] = field(default_factory=list)
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    daily_tokens: int | None = None
    enforce: bool = True  # false: shadow mode for this key's limits (counted, never refused)
    lease: float = 0.02  # with shared state: the fraction of rpm/tpm a process may lease (0: off)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    mode: Literal["passthrough", "keys"] = "passthrough"
    keys: list[AuthKeyConfig] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    context_window: int | None = None
    encoding: str | None = None
    max_output_tokens: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    enabled: bool = True
    port: int | None = None  # serve /metrics on a separate port too
    models: list[str] = field(default_factory=list)  # extra model names allowed as labels
    # Ask streams for usage (stream_options.include_usage), hidden from clients.
    inject_stream_usage: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    api_key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstreams: dict[str, UpstreamConfig] = field(default_factory=dict)
    routes: list[RouteConfig] = field(default_factory=list)
    passthrough: bool = False
    state: StateConfig = field(default_factory=StateConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    cache: CacheConfig = field(default_factory=CacheConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    budgets: BudgetsConfig = field(default_factory=BudgetsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    pricing: dict[str, PriceConfig] = field(default_factory=dict)
    tools: dict[str, ToolConfig] = field(default_factory=dict)
    mcp: McpConfig = field(default_factory=McpConfig)
