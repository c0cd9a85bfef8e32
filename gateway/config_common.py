"""Blocks shared by LLM upstreams and tool servers: connection pool and timeouts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    max_connections: int = 256
    keepalive_s: float = 30.0
    # raw: gateway/rawhttp (an asyncio.Protocol client on aiohttp's C parser: ~0.1 ms less CPU per request,
    # bench/results/2026-12-06-raw-client.md); aiohttp: aiohttp.ClientSession, as before
    client: Literal["aiohttp", "raw"] = "raw"

@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutsConfig:
    connect_s: float = 5.0
    first_byte_s: float = 60.0
    idle_s: float = 120.0
    total_s: float = 600.0
