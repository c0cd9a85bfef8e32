"""Start-up checks of the ``mcp`` block: ``mcp.servers.<name>.<key>: what is wrong``."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from gateway.config_model import Config
from policies.mcp.config import McpRateLimit, McpServerConfig

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def problems(cfg: Config) -> list[str]:
    found: list[str] = []
    for name, server in cfg.mcp.servers.items():
        found.extend(server_problems(f"mcp.servers.{name}", name, server))
    return found


def server_problems(at: str, name: str, server: McpServerConfig) -> list[str]:
    found: list[str] = []
    if not _NAME.match(name):
        found.append(f"{at}: the server name may only use letters, digits, '_', '.', '-'")
    parts = urlsplit(server.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        found.append(f"{at}.url: must be an http(s) URL")  # the URL may hold a secret: not echoed
    if server.retry.max_attempts < 1:
        found.append(f"{at}.retry.max_attempts: must be at least 1")
    for key in ("catalog_ttl_s", "result_cache_ttl_s"):
        if getattr(server, key) < 0:
            found.append(f"{at}.{key}: must be >= 0")
    found.extend(rate_limit_problems(f"{at}.rate_limit", server.rate_limit))
    for tool, tc in server.tools.items():
        if tc.timeout_s is not None and tc.timeout_s <= 0:
            found.append(f"{at}.tools.{tool}.timeout_s: must be > 0")
        if tc.cache_ttl_s is not None and tc.cache_ttl_s < 0:
            found.append(f"{at}.tools.{tool}.cache_ttl_s: must be >= 0")
    return found


def rate_limit_problems(at: str, rl: McpRateLimit) -> list[str]:
    found: list[str] = []
    for key in ("rpm", "max_concurrency"):
        value = getattr(rl, key)
        if value is not None and value <= 0:
            found.append(f"{at}.{key}: must be > 0")
    for key in ("max_queue", "max_queue_wait_s"):
        if getattr(rl, key) < 0:
            found.append(f"{at}.{key}: must be >= 0")
    return found
