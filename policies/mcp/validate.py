"""Start-up checks of the ``mcp`` block: ``mcp.servers.<name>.<key>: what is wrong``."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from gateway.config_model import Config
from policies.mcp.config import McpServerConfig

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
    rl = server.rate_limit
    if rl.rpm is not None and rl.rpm <= 0:
        found.append(f"{at}.rate_limit.rpm: must be > 0")
    if rl.max_concurrency is not None and rl.max_concurrency <= 0:
        found.append(f"{at}.rate_limit.max_concurrency: must be > 0")
    for tool, tc in server.tools.items():
        if tc.timeout_s is not None and tc.timeout_s <= 0:
            found.append(f"{at}.tools.{tool}.timeout_s: must be > 0")
        if tc.cache_ttl_s is not None and tc.cache_ttl_s < 0:
            found.append(f"{at}.tools.{tool}.cache_ttl_s: must be >= 0")
    return found
