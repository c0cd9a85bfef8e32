"""The end of a proxied message: its counter, latency and, for ``tools/call``, its log line."""
from __future__ import annotations

import logging

from policies.mcp.call import Call
from policies.mcp.deps import Deps

log = logging.getLogger("gateway.mcp")


def finish(deps: Deps, call: Call, outcome: str) -> None:
    call.outcome = outcome
    tool = call.server.tool_label(call.msg.tool)
    seconds = deps.now() - call.started
    deps.metrics.done(call.server.name, call.msg.method or "", tool, outcome, seconds)
    if call.is_tool_call:
        log.info(
            "mcp tool call",
            extra={"server": call.server.name, "tool": tool, "outcome": outcome, "safety": call.safety},
        )
