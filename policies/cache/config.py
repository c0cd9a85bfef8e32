"""The ``cache`` block: exact, semantic, coalescing and embeddings caches."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

CacheMode = Literal["read_write", "read_only", "write_only", "off"]

@dataclass(frozen=True, slots=True, kw_only=True)
class ExactCacheConfig:
    enabled: bool = True
    ttl_s: float = 3600.0
    max_entries: int = 10000
    max_bytes: int = 64 * 1024 * 1024  # the caps' sum fits the sidecar's 512Mi (gateway.memory_caps)
    deterministic_only: bool = True
    cache_truncated: bool = False
    mode: CacheMode = "read_write"

@dataclass(frozen=True, slots=True, kw_only=True)
class SemanticCacheConfig:
    enabled: bool = False
    threshold: float = 0.95
    ttl_s: float = 3600.0
    max_entries: int = 50000
    max_bytes: int = 32 * 1024 * 1024  # vectors, answers and (cut) questions held in memory
    embedder: str = "local"  # local | upstream:<name>:<model>
    skip_tool_turns: bool = True
    mode: CacheMode = "read_write"

@dataclass(frozen=True, slots=True, kw_only=True)
class CoalesceConfig:
    enabled: bool = True
    max_waiters: int = 1000
    # Unread bytes one flight may hold; past it the flight takes no new waiters and reads the upstream at
    # its slowest reader's pace (docs/reliability.md).
    max_flight_bytes: int = 256 * 1024
    nondeterministic: bool = False
    # Across workers/replicas (a shared state backend): how long a follower waits for the leader's cache
    # entry before it calls the provider itself; 0 turns fleet coalescing off.
    fleet_wait_s: float = 10.0

@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingsCacheConfig:
    enabled: bool = True
    ttl_s: float = 86400.0
    batch_window_ms: float = 5.0
    max_batch: int = 256
    max_entries: int = 200000  # per-input vectors held in memory
    max_bytes: int = 32 * 1024 * 1024

@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    # Request headers that change the answer, folded into every cache key on top of the built-in list
    # (``policies.cache.keys.DEFAULT_KEY_HEADERS``: openai-beta, openai-organization, openai-project,
    # anthropic-version, anthropic-beta). The forwarded query string is always part of the key.
    key_headers: list[str] = field(default_factory=list)
    exact: ExactCacheConfig = field(default_factory=ExactCacheConfig)
    semantic: SemanticCacheConfig = field(default_factory=SemanticCacheConfig)
    coalesce: CoalesceConfig = field(default_factory=CoalesceConfig)
    embeddings: EmbeddingsCacheConfig = field(default_factory=EmbeddingsCacheConfig)
