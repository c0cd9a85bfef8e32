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
        deps.tool_stats.add(call.server.name, tool, seconds, outcome)
        _ledger(deps, call, seconds)


def _ledger(deps: Deps, call: Call, seconds: float) -> None:
    ledger = deps.st.ledger
    if ledger is None:
        return
    ledger.tool_call(
        request_id=call.request_id, tenant=call.tenant, server=call.server.name, tool=call.msg.tool or "",
        duration_s=seconds, outcome=call.outcome, attempts=call.attempts, status=call.status,
    )
