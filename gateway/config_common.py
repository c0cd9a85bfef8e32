"""Blocks shared by LLM upstreams and tool servers: connection pool and timeouts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    max_connections: int = 256
    keepalive_s: float = 30.0
    # aiohttp: aiohttp.ClientSession; raw: gateway/rawhttp (an asyncio.Protocol client, less CPU per request)
    client: Literal["aiohttp", "raw"] = "aiohttp"

@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutsConfig:
    connect_s: float = 5.0
    first_byte_s: float = 60.0
    idle_s: float = 120.0
    total_s: float = 600.0
