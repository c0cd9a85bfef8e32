"""``/mcp/{server}``: a method-aware Streamable HTTP proxy to MCP servers.

Messages are forwarded byte for byte; the policies answer only where they must:
the catalog cache (``tools/list`` & co), the read-only result cache, retries for
calls safe to repeat, the per-tool timeout with its ``fallback_result``, the
server's breaker and rate limit, and the tenants allow-list. Streams are relayed
chunk by chunk as they arrive.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.appstate import AppState
from gateway.errors import LocalReply
from gateway.handler import not_found, reject
from gateway.request import read_body
from policies.mcp import jsonrpc as rpc
from policies.mcp.config import McpServerConfig
from policies.mcp.metrics import McpMetrics
from policies.mcp.safety import Safety, catalog_safety, classify
from policies.mcp.store import TtlStore, catalog_key, result_key
from policies.mcp.upstream import FORWARD_RESPONSE, RETRY_STATUSES, McpServer, RateLimited
from policies.resilience.backoff import backoff_delay
from policies.resilience.breaker import CircuitOpen, Ticket

log = logging.getLogger("gateway.mcp")
JSON = "application/json"
SSE = "text/event-stream"


@dataclass(slots=True)
class Call:
    """One posted message on its way: what the policies decided about it."""

    server: McpServer
    msg: rpc.Message
    raw: bytes
    namespace: str
    started: float
    safety: Safety = "write"
    deadline: float = 0.0
    outcome: str = "ok"
    result: Any = field(default=None)


class Upstream5xx(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status


class McpGateway:
    """The ``/mcp/`` handler for one config."""

    def __init__(self, st: AppState, servers: dict[str, McpServer], metrics: McpMetrics,
                 catalogs: TtlStore, results: TtlStore, rand: Callable[[], float]) -> None:
        self.st, self.servers, self.metrics = st, servers, metrics
        self.catalogs, self.results, self.rand = catalogs, results, rand

    async def __call__(self, request: web.Request, rid: str) -> web.StreamResponse:
        name = request.path[len("/mcp/"):] if request.path.startswith("/mcp/") else ""
        server = self.servers.get(name)
        if server is None:
            return not_found(rid, request)
        try:
            identity = self.st.runtime.auth.identify(request.headers)
            if server.cfg.tenants is not None and identity.tenant not in server.cfg.tenants:
                raise LocalReply(403, f"Tenant may not use MCP server {server.name}.", code="forbidden")
        except LocalReply as reply:
            self.metrics.done(
                server.name, request.method, "", "forbidden" if reply.status == 403 else "unauthorized", 0.0
            )
            return reject(self.st, request, rid, reply)
        if request.method == "POST":
            return await self._post(request, rid, server, identity.namespace)
        if request.method in ("GET", "DELETE"):
            return await self._plain(request, server, request.method, None)
        self.metrics.done(server.name, "other", "", "bad_request", 0.0)
        return reject(
            self.st,
            request,
            rid,
            LocalReply(405, f"Method {request.method} not allowed on /mcp/.", code="method_not_allowed"),
        )

    async def _post(
        self, request: web.Request, rid: str, server: McpServer, namespace: str
    ) -> web.StreamResponse:
        try:
            raw = await read_body(request, self.st.config.server.max_body_bytes)
        except LocalReply as reply:
            self.metrics.done(server.name, "other", "", "bad_request", 0.0)
            return reject(self.st, request, rid, reply)
        try:
            value = rpc.parse(raw)
            if isinstance(value, list):
                return await self._plain(request, server, "batch", raw)
            msg = rpc.message(value)
        except rpc.BadMessage as bad:
            self.metrics.done(server.name, "other", "", "bad_request", 0.0)
            return web.Response(status=400, body=rpc.error(None, bad.code, str(bad)), content_type=JSON)
        call = Call(server=server, msg=msg, raw=raw, namespace=namespace, started=self.st.clock())
        if msg.is_request and msg.method in rpc.LIST_METHODS:
            return await self._catalog(request, call)
        if msg.is_request and msg.method == "tools/call":
            return await self._tool_call(request, call)
        return await self._plain(request, server, msg.method or "response", raw)

    # --- transparent forwarding -----------------------------------------------------------------

    async def _plain(
        self, request: web.Request, server: McpServer, method: str, body: bytes | None
    ) -> web.StreamResponse:
        started = self.st.clock()
        try:
            upstream = await server.send(request.method, server.headers(request.headers), body)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.metrics.done(server.name, method, "", "upstream_error", self.st.clock() - started)
            return _http_error(502, f"MCP server {server.name} is unreachable ({type(exc).__name__}).")
        try:
            resp = await self._relay(request, server, upstream, None)
        finally:
            upstream.release()
        self.metrics.done(
            server.name,
            method,
            "",
            "ok" if upstream.status < 400 else f"http_{upstream.status // 100}xx",
            self.st.clock() - started,
        )
        return resp

    async def _relay(
        self,
        request: web.Request,
        server: McpServer,
        upstream: aiohttp.ClientResponse,
        first: bytes | None,
        call: Call | None = None,
        tap: Callable[[Any], None] | None = None,
    ) -> web.StreamResponse:
        """Relay the upstream answer as it arrives; SSE messages are read on the way (list_changed,
        results)."""
        resp = web.StreamResponse(status=upstream.status, headers=_response_headers(upstream))
        await resp.prepare(request)
        reader = rpc.SseReader() if upstream.content_type == SSE else None
        chunks = _chunks(upstream, first)
        while True:
            try:
                left = None if call is None else max(call.deadline - self.st.clock(), 0.001)
                chunk = await asyncio.wait_for(chunks.__anext__(), left)
            except StopAsyncIteration:
                break
            except TimeoutError:
                assert call is not None
                await self._cut(resp, call, reader is not None)
                upstream.close()
                break
            if reader is not None:
                for message in reader.feed(chunk):
                    self._saw(server, message, tap)
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def _cut(self, resp: web.StreamResponse, call: Call, sse: bool) -> None:
        """The call ran past its timeout after its stream began: end it with the fallback (or an error)."""
        self._cancel_upstream(call)
        override = call.server.cfg.tools.get(call.msg.tool or "")
        fallback = override.fallback_result if override else None
        call.outcome = "timeout_mid_stream" if fallback is None else "fallback_timeout_mid_stream"
        if not sse:
            return
        text = "The tool call timed out." if fallback is None else fallback.text
        body = (
            rpc.fallback(call.msg.id, text)
            if fallback is not None
            else rpc.error(call.msg.id, rpc.UPSTREAM_ERROR, text)
        )
        await resp.write(rpc.sse_event(body))

    def _saw(self, server: McpServer, message: Any, tap: Callable[[Any], None] | None) -> None:
        if isinstance(message, dict) and message.get("method") == "notifications/tools/list_changed":
            dropped = self.catalogs.drop_prefix((server.name,))
            server.safety.clear()
            self.metrics.cache_lookup(server.name, "catalog", "invalidated")
            log.info("mcp catalog invalidated", extra={"server": server.name, "entries": dropped})
        if tap is not None:
            tap(message)

    # --- catalog cache --------------------------------------------------------------------------

    async def _catalog(self, request: web.Request, call: Call) -> web.StreamResponse:
        server, msg = call.server, call.msg
        key = catalog_key(server.name, call.namespace, msg.method or "", msg.params)
        cached = self.catalogs.get(key)
        if cached is not None:
            self.metrics.cache_lookup(server.name, "catalog", "hit")
            self.metrics.done(server.name, msg.method or "", "", "cached", self.st.clock() - call.started)
            return web.Response(body=rpc.result(msg.id, cached), content_type=JSON)
        self.metrics.cache_lookup(server.name, "catalog", "miss")
        return await self._forward_call(request, call, self._store_catalog(call, key))

    def _store_catalog(self, call: Call, key: tuple[str, ...]) -> Callable[[Any], None]:
        def tap(message: Any) -> None:
            if not (isinstance(message, dict) and message.get("id") == call.msg.id and "result" in message):
                return
            result = message["result"]
            if call.msg.method == "tools/list" and isinstance(result, dict):
                call.server.safety.update(catalog_safety(result))
            if not (isinstance(result, dict) and result.get("nextCursor")):
                self.catalogs.put(key, result, call.server.cfg.catalog_ttl_s)

        return tap

    # --- tools/call -----------------------------------------------------------------------------

    async def _tool_call(self, request: web.Request, call: Call) -> web.StreamResponse:
        server, tool = call.server, call.msg.tool or ""
        cfg = server.cfg
        call.safety = classify(tool, cfg, server.safety.get(tool))
        override = cfg.tools.get(tool)
        ttl = (
            override.cache_ttl_s if override and override.cache_ttl_s is not None else cfg.result_cache_ttl_s
        )
        key = result_key(server.name, call.namespace, tool, call.msg.params.get("arguments") or {})
        if call.safety == "read_only" and ttl > 0:
            hit = self.results.get(key)
            self.metrics.cache_lookup(server.name, "result", "hit" if hit is not None else "miss")
            if hit is not None:
                self._done(call, "cached")
                return web.Response(body=rpc.result(call.msg.id, hit), content_type=JSON)
        timeout = override.timeout_s if override and override.timeout_s else cfg.timeouts.total_s
        call.deadline = call.started + timeout
        store = self._store_result(call, key, ttl if call.safety == "read_only" else 0.0)
        tracing = self.st.tracer
        if tracing is None:
            return await self._forward_call(request, call, store)
        span = tracing.tracer.start_span(
            f"execute_tool {tool[:64]}",
            context=tracing.propagator.extract(request.headers),
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool[:64],
                "mcp.server": server.name,
                "mcp.tool.safety": call.safety,
            },
        )
        try:
            return await self._forward_call(request, call, store)
        finally:
            span.set_attribute("mcp.outcome", call.outcome)
            if call.outcome not in ("ok", "cached"):
                span.set_status(Status(StatusCode.ERROR, call.outcome))
            span.end()

    def _store_result(self, call: Call, key: tuple[str, ...], ttl: float) -> Callable[[Any], None]:
        def tap(message: Any) -> None:
            if isinstance(message, dict) and message.get("id") == call.msg.id and "result" in message:
                result = message["result"]
                call.result = result
                if isinstance(result, dict) and result.get("isError"):
                    call.outcome = "tool_error"
                elif ttl > 0:
                    self.results.put(key, result, ttl)
            elif isinstance(message, dict) and message.get("id") == call.msg.id and "error" in message:
                call.outcome = "rpc_error"

        return tap

    def _done(self, call: Call, outcome: str) -> None:
        call.outcome = outcome
        tool = call.server.tool_label(call.msg.tool)
        self.metrics.done(
            call.server.name, call.msg.method or "", tool, outcome, self.st.clock() - call.started
        )
        if call.msg.method == "tools/call":
            log.info(
                "mcp tool call",
                extra={"server": call.server.name, "tool": tool, "outcome": outcome, "safety": call.safety},
            )

    async def _forward_call(
        self, request: web.Request, call: Call, tap: Callable[[Any], None]
    ) -> web.StreamResponse:
        """Admit, attempt (retrying only calls safe to repeat), then relay; fallback on failure."""
        server = call.server
        if not call.deadline:
            call.deadline = call.started + server.cfg.timeouts.total_s
        try:
            server.admit()
        except RateLimited as why:
            return self._failed(
                call, "rate_limited", f"MCP server {server.name} is over its rate limit ({why})."
            )
        server.inflight += 1
        try:
            return await self._attempts(request, call, tap)
        finally:
            server.inflight -= 1

    async def _attempts(
        self, request: web.Request, call: Call, tap: Callable[[Any], None]
    ) -> web.StreamResponse:
        server = call.server
        safe = call.safety != "write" or call.msg.method != "tools/call"
        attempts = server.cfg.retry.max_attempts if safe else 1
        headers = server.headers(request.headers)
        for attempt in range(attempts):
            try:
                ticket = server.breaker.admit()
            except CircuitOpen:
                return self._failed(
                    call, "circuit_open", f"MCP server {server.name} is unavailable (circuit open)."
                )
            outcome = await self._attempt(request, call, tap, ticket, headers)
            if isinstance(outcome, web.StreamResponse):
                return outcome
            last = attempt + 1 >= attempts or self.st.clock() >= call.deadline
            if last:
                return self._failed(call, outcome, f"MCP server {server.name} failed: {outcome}.")
            self.metrics.metrics.decision("mcp_retry", outcome)
            delay = backoff_delay(attempt + 1, server.cfg.retry, self.rand)
            await asyncio.sleep(min(delay, max(0.0, call.deadline - self.st.clock())))
        return self._failed(call, "exhausted", "retries exhausted")

    async def _attempt(
        self,
        request: web.Request,
        call: Call,
        tap: Callable[[Any], None],
        ticket: Ticket,
        headers: dict[str, str],
    ) -> web.StreamResponse | str:
        """One attempt: a response (relayed), or why it failed before any byte reached the client."""
        left = call.deadline - self.st.clock()
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
            return await self._first_then_relay(request, call, tap, ticket, upstream)
        finally:
            upstream.release()

    async def _first_then_relay(
        self,
        request: web.Request,
        call: Call,
        tap: Callable[[Any], None],
        ticket: Ticket,
        upstream: aiohttp.ClientResponse,
    ) -> web.StreamResponse | str:
        """Hold the client's answer until the first bytes come (a fallback can still be a clean answer)."""
        try:
            first = await asyncio.wait_for(
                upstream.content.readany(), max(call.deadline - self.st.clock(), 0.001)
            )
        except TimeoutError:
            ticket.settle("failure")
            upstream.close()
            self._cancel_upstream(call)
            return "timeout"
        except (aiohttp.ClientError, OSError):
            ticket.settle("failure")
            return "reset"
        ticket.settle("success" if upstream.status < 500 else "failure")
        resp = await self._relay(request, call.server, upstream, first, call, tap)
        self._done(call, call.outcome if upstream.status < 400 else f"http_{upstream.status // 100}xx")
        return resp

    def _cancel_upstream(self, call: Call) -> None:
        """Tell the server the gateway gave up on this request (best effort, in the background)."""
        note = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": call.msg.id, "reason": "gateway timeout"},
        }
        headers = {"content-type": JSON, "accept": f"{JSON}, {SSE}", **call.server.cfg.headers}
        task = asyncio.get_running_loop().create_task(
            _post_quietly(call.server, headers, rpc.canonical_json(note))
        )
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _failed(self, call: Call, outcome: str, text: str) -> web.Response:
        override = call.server.cfg.tools.get(call.msg.tool or "")
        fallback = override.fallback_result if override else None
        if call.msg.method == "tools/call" and fallback is not None:
            self._done(call, f"fallback_{outcome}")
            return web.Response(
                body=rpc.fallback(call.msg.id, fallback.text),
                content_type=JSON,
                headers={"x-gateway-fallback": "true"},
            )
        self._done(call, outcome)
        return web.Response(body=rpc.error(call.msg.id, rpc.UPSTREAM_ERROR, text), content_type=JSON)


async def _post_quietly(server: McpServer, headers: dict[str, str], body: bytes) -> None:
    """Best effort (``notifications/cancelled`` upstream): the caller already answered and counted it."""
    try:
        resp = await server.send("POST", headers, body)
        resp.release()
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass


async def _chunks(upstream: aiohttp.ClientResponse, first: bytes | None) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in upstream.content.iter_any():
        yield chunk


def _response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: upstream.headers[k] for k in FORWARD_RESPONSE if k in upstream.headers}


def _http_error(status: int, text: str) -> web.Response:
    return web.Response(status=status, body=rpc.error(None, rpc.UPSTREAM_ERROR, text), content_type=JSON)


__all__ = ["McpGateway", "McpServerConfig"]
