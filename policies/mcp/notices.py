"""Server messages the proxy reacts to while relaying: ``notifications/tools/list_changed``."""
from __future__ import annotations

import logging
from typing import Any

from policies.mcp.deps import Deps
from policies.mcp.upstream import McpServer

log = logging.getLogger("gateway.mcp")
LIST_CHANGED = "notifications/tools/list_changed"


def saw(deps: Deps, server: McpServer, message: Any) -> None:
    """A list_changed drops the server's catalogs (every namespace) and what it taught about tools."""
    if not (isinstance(message, dict) and message.get("method") == LIST_CHANGED):
        return
    dropped = deps.catalogs.drop_prefix((server.name,))
    server.safety.clear()
    deps.metrics.cache_lookup(server.name, "catalog", "invalidated")
    log.info("mcp catalog invalidated", extra={"server": server.name, "entries": dropped})
