"""The OpenTelemetry span of a ``tools/call`` (GenAI conventions: ``execute_tool {name}``)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from policies.mcp.call import Call
from policies.mcp.deps import Deps

T = TypeVar("T")


async def traced(deps: Deps, request: web.Request, call: Call, run: Callable[[], Awaitable[T]]) -> T:
    tracing = deps.st.tracer
    if tracing is None:
        return await run()
    from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: PLC0415 - only with tracing on

    tool = (call.msg.tool or "")[:64]
    span = tracing.tracer.start_span(
        f"execute_tool {tool}",
        context=tracing.propagator.extract(request.headers),
        kind=SpanKind.INTERNAL,
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "mcp.server": call.server.name,
            "mcp.tool.safety": call.safety,
        },
    )
    try:
        return await run()
    finally:
        span.set_attribute("mcp.outcome", call.outcome)
        if call.outcome not in ("ok", "cached"):
            span.set_status(Status(StatusCode.ERROR, call.outcome))
        span.end()
