"""The registry's entry to the MCP feature: its modules (~26, ~1.5 MB resident) are imported only when
``mcp.servers`` configures a server (issue 21: a process loads what its config uses)."""
from __future__ import annotations

from gateway.appstate import AppState
from gateway.components import MCP_HANDLER
from gateway.config_model import Config


async def factory(st: AppState, config: Config) -> None:
    if not config.mcp.servers:
        st.components.pop(MCP_HANDLER)  # a reload that removed every server
        return
    from policies.mcp.routes import factory as build  # noqa: PLC0415 - only with a server configured

    await build(st, config)
