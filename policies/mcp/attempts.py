"""Forward one request-shaped message: admit it, attempt it (retrying only what is safe to repeat),
then relay the answer; a failure before the first byte gets ``fallback.failed``."""
from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from policies.mcp.admission import Refused
from policies.mcp.call import Call, Tap
from policies.mcp.cancel import cancel_upstream
from policies.mcp.deps import Deps
from policies.mcp.fallback import failed
from policies.mcp.outcome import finish
from policies.mcp.relay import relay
from policies.mcp.upstream import RETRY_STATUSES
from policies.resilience.backoff import backoff_delay
from policies.resilience.breaker import CircuitOpen, Ticket


async def forward_call(deps: Deps, request: web.Request, call: Call, tap: Tap) -> web.StreamResponse:
    server = call.server
    if not call.deadline:
        call.deadline = call.started + server.cfg.timeouts.total_s
    try:
        decision = await server.admission.enter(call.deadline - deps.now())
    except Refused as no:
        deps.metrics.admission(server.name, "server", no.why)
        text = f"MCP server {server.name} is over its rate limit ({no.why})."
        return failed(deps, call, "rate_limited", text)
    deps.metrics.admission(server.name, "server", decision)
    try:
        return await _attempts(deps, request, call, tap)
    finally:
        server.admission.leave()


async def _attempts(deps: Deps, request: web.Request, call: Call, tap: Tap) -> web.StreamResponse:
    server = call.server
    safe = call.safety != "write" or not call.is_tool_call
    attempts = server.cfg.retry.max_attempts if safe else 1
    headers = server.headers(request.headers)
    for attempt in range(attempts):
        try:
            ticket = server.breaker.admit()
        except CircuitOpen:
            text = f"MCP server {server.name} is unavailable (circuit open)."
            return failed(deps, call, "circuit_open", text)
        call.attempts += 1
        outcome = await _attempt(deps, request, call, tap, ticket, headers)
        if isinstance(outcome, web.StreamResponse):
            return outcome
        if attempt + 1 >= attempts or deps.now() >= call.deadline:
            return failed(deps, call, outcome, f"MCP server {server.name} failed: {outcome}.")
        deps.metrics.metrics.decision("mcp_retry", outcome)
        delay = backoff_delay(attempt + 1, server.cfg.retry, deps.rand)
        await asyncio.sleep(min(delay, max(0.0, call.deadline - deps.now())))
    return failed(deps, call, "exhausted", "retries exhausted")


async def _attempt(deps: Deps, request: web.Request, call: Call, tap: Tap, ticket: Ticket,
                   headers: dict[str, str]) -> web.StreamResponse | str:
    """One attempt: a response (relayed), or why it failed before any byte reached the client."""
    left = call.deadline - deps.now()
    try:
        upstream = await asyncio.wait_for(call.server.send("POST", headers, call.raw), max(left, 0.001))
    except TimeoutError:
        ticket.settle("failure")
        return "timeout"
    except (aiohttp.ClientError, OSError):
        ticket.settle("failure")
        return "connect_error"
    try:
        if upstream.status in RETRY_STATUSES:
            ticket.settle("ignore" if upstream.status == 429 else "failure")
            return f"http_{upstream.status}"
        return await _first_then_relay(deps, request, call, tap, ticket, upstream)
    finally:
        upstream.release()


async def _first_then_relay(deps: Deps, request: web.Request, call: Call, tap: Tap, ticket: Ticket,
                            upstream: aiohttp.ClientResponse) -> web.StreamResponse | str:
    """Hold the client's answer until the first bytes come (a fallback can still be a clean answer)."""
    try:
        first = await asyncio.wait_for(upstream.content.readany(), max(call.deadline - deps.now(), 0.001))
    except TimeoutError:
        ticket.settle("failure")
        upstream.close()
        cancel_upstream(call)
        return "timeout"
    except (aiohttp.ClientError, OSError):
        ticket.settle("failure")
        return "reset"
    ticket.settle("success" if upstream.status < 500 else "failure")
    call.status = upstream.status
    try:
        return await relay(deps, request, call.server, upstream, first, call, tap)
    except asyncio.CancelledError:  # the client went away (aiohttp cancels the handler)
        if not call.answered:
            call.outcome = "client_disconnected"
        raise
    finally:
        finish(deps, call, call.outcome if upstream.status < 400 else f"http_{upstream.status // 100}xx")
