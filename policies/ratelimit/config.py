"""The ``rate_limit`` block (per upstream, per MCP server)."""
from __future__ import annotations

from dataclasses import dataclass


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
    # With shared state: the fraction of rpm/tpm a process may take at once and admit locally (0: off)
    lease: float = 0.02
