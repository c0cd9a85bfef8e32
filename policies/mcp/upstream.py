"""One MCP server as the gateway sees it: its pool, breaker, rate limit and learned catalog."""
from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDictProxy

from policies.mcp.admission import Admission
from policies.mcp.config import McpServerConfig
from policies.mcp.safety import Safety
from policies.ratelimit.buckets import LimiterClock, MemoryBuckets
from policies.resilience.breaker import CircuitBreaker

MCP_PREFIX = "mcp:"
# Client headers the transport needs; everything else (Authorization, cookies, the gateway key) stays here.
FORWARD_REQUEST = ("accept", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id")
FORWARD_RESPONSE = ("content-type", "mcp-session-id", "mcp-protocol-version", "cache-control")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class McpServer:
    """The long-lived parts of one configured server (rebuilt per config; the breaker is shared)."""

    def __init__(self, name: str, cfg: McpServerConfig, breaker: CircuitBreaker, buckets: MemoryBuckets,
                 session: aiohttp.ClientSession, safety: dict[str, Safety] | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.breaker = breaker
        self.buckets = buckets
        # learned from tools/list answers; shared across reloads (the catalog outlives a config)
        self.safety: dict[str, Safety] = {} if safety is None else safety
        self.admission = Admission(MCP_PREFIX + name, cfg.rate_limit, buckets)
        self.session = session

    def tool_label(self, tool: str | None) -> str:
        if tool is None:
            return ""
        return tool if tool in self.safety or tool in self.cfg.tools else "other"

    def headers(self, client: CIMultiDictProxy[str] | Mapping[str, str]) -> dict[str, str]:
        out = {k: client[k] for k in FORWARD_REQUEST if k in client}
        out.update(self.cfg.headers)
        return out

    async def send(self, method: str, headers: dict[str, str], body: bytes | None) -> aiohttp.ClientResponse:
        """Send and wait for the response head within ``first_byte_s``.

        The server's own ``GET`` stream may stay quiet for long: it has no idle timeout.
        """
        t = self.cfg.timeouts
        timeout = aiohttp.ClientTimeout(
            total=None, connect=t.connect_s, sock_read=None if method == "GET" else t.idle_s
        )
        coro = self.session.request(
            method, self.cfg.url, headers=headers, data=body, allow_redirects=False, timeout=timeout
        )
        return await asyncio.wait_for(coro, self.cfg.timeouts.first_byte_s)


def new_session(cfg: McpServerConfig) -> aiohttp.ClientSession:
    t = cfg.timeouts
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, connect=t.connect_s, sock_read=t.idle_s),
        auto_decompress=False,
    )


def new_buckets(clock: LimiterClock) -> MemoryBuckets:
    return MemoryBuckets(clock)
