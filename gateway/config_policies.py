"""Configuration blocks of the policies (rate limit, retry, breaker, cache,
compression, budgets). Kept apart from the policies so config can be loaded and
checked without importing them, and so there are no import cycles."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

CacheMode = Literal["read_write", "read_only", "write_only", "off"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitConfig:
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    headroom: float = 0.9
    max_queue: int = 1024
    max_queue_wait_s: float = 10.0
    enforce: bool = True
    default_output_tokens: int = 1024  # reserved when the request names no output limit


DEFAULT_RETRY_ON = (
    "connect_error",
    "reset_before_response",
    "timeout_before_first_byte",
    "429",
    "500",
    "502",
    "503",
    "504",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    max_attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    jitter: Literal["full", "equal", "none"] = "full"
    retry_on: list[str] = field(default_factory=lambda: list(DEFAULT_RETRY_ON))
    respect_retry_after: bool = True
    max_retry_after_s: float = 60.0
    budget_ratio: float = 0.2
    budget_floor: int = 10  # retries always allowed per window, however few the requests


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig:
    consecutive_failures: int = 5
    failure_ratio: float = 0.5
    min_calls: int = 20
    window_s: float = 30.0
    open_s: float = 30.0
    max_open_s: float = 300.0
    half_open_probes: int = 3
    enforce: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ExactCacheConfig:
    enabled: bool = True
    ttl_s: float = 3600.0
    max_entries: int = 10000
    max_bytes: int = 256 * 1024 * 1024
    deterministic_only: bool = True
    cache_truncated: bool = False
    mode: CacheMode = "read_write"


@dataclass(frozen=True, slots=True, kw_only=True)
class SemanticCacheConfig:
    enabled: bool = False
    threshold: float = 0.95
    ttl_s: float = 3600.0
    max_entries: int = 50000
    embedder: str = "local"  # local | upstream:<name>:<model>
    skip_tool_turns: bool = True
    mode: CacheMode = "read_write"


@dataclass(frozen=True, slots=True, kw_only=True)
class CoalesceConfig:
    enabled: bool = True
    max_waiters: int = 1000
    nondeterministic: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingsCacheConfig:
    enabled: bool = True
    ttl_s: float = 86400.0
    batch_window_ms: float = 5.0
    max_batch: int = 256
    max_entries: int = 200000  # per-input vectors held in memory
    max_bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    exact: ExactCacheConfig = field(default_factory=ExactCacheConfig)
    semantic: SemanticCacheConfig = field(default_factory=SemanticCacheConfig)
    coalesce: CoalesceConfig = field(default_factory=CoalesceConfig)
    embeddings: EmbeddingsCacheConfig = field(default_factory=EmbeddingsCacheConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressionConfig:
    enabled: bool = True
    target: float = 0.8
    max_prompt_tokens: int | None = None
    tool_output_max_tokens: int = 2000
    keep_last_turns: int = 6
    min_saving_tokens: int = 200
    stable_prefix: bool = True
    enforce: bool = True  # false: shadow mode, count what would be done, send the request as is


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetClassMatch:
    max_prompt_tokens: int | None = None
    regex: str | None = None  # searched in the last user message


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetClass:
    match: BudgetClassMatch
    max_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetsConfig:
    default_max_tokens: int | None = None
    max_tokens_cap: int | None = None
    on_exceed: Literal["clamp", "reject"] = "clamp"
    classes: list[BudgetClass] = field(default_factory=list)
    enforce: bool = True  # false: shadow mode, count what would be done, send the request as is
