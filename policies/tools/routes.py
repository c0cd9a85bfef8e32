"""Tool-provider routes: ``/tools/{name}/{path}`` proxied to ``tools.<name>.base_url``.

Agents call HTTP tools (quotes, search, weather...) through the gateway so those
calls get the same pooling, timeouts and circuit breaker as LLM calls, one place
for the provider keys, and graceful degradation. Reads (GET/HEAD, or every
method when ``read_only: true``) may be retried per the tool's ``retry``; writes
get exactly one attempt, because a write that timed out may still have happened.
When the provider is down (failure after retries, 5xx, breaker open) and
``fallback_response`` is set, the client gets it with ``x-gateway-fallback: true``.

Layers of a tool route, outermost first::

    [tool cache] -> fallback_response -> retry -> circuit breaker -> ToolClient.send

The cache slot is for issue 6: a policy registered as ``state.components["tool_cache"]``
before this factory runs (the cache factories come earlier in the registry) becomes
the outermost layer. It should cache only when ``ex.state.get(TOOL_READ)`` is true and
never store a ``source == "local"`` answer (that is a fallback_response).
``ex.state.get(TOOL_ROUTE)`` is the ``ToolRoute``. The relay is the core's
(``gateway.handler.proxy``), so tool answers stream and are logged like any other.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from gateway.appstate import AppState
from gateway.auth import Identity
from gateway.body import OneChunk
from gateway.chain import Next, build_chain
from gateway.components import TOOL_CACHE, TOOL_HANDLER, TOOL_READ
from gateway.config_model import Config
from gateway.errors import UpstreamFailure
from gateway.exchange import Exchange, RequestFacts, StateKey, UpstreamResponse
from gateway.exchange import Target as ExchangeTarget
from gateway.handler import not_found, proxy
from gateway.paths import safe_subpath
from gateway.request import read_body
from policies.resilience.breaker import CircuitOpen
from policies.resilience.breaker_layer import CircuitBreakerPolicy, install_sink
from policies.resilience.commit import close_body
from policies.resilience.metrics import ResilienceMetrics
from policies.resilience.registry import TOOL_PREFIX, Resilience, resilience_of
from policies.resilience.retry_layer import RetryPolicy
from policies.resilience.targets import Plan, Target, tool_targets
from policies.tools.config import FallbackResponse, ToolConfig
from policies.tools.paths import make_tool_client, split_tool_path, tool_headers, tool_query

if TYPE_CHECKING:
    from gateway.components import RouteHandler

_READ_METHODS = frozenset({"GET", "HEAD"})
_CONFIGS: StateKey[dict[str, ToolConfig]] = StateKey("tools.client_configs")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolRoute:
    """One configured tool, with what is derived from its config once."""

    name: str
    config: ToolConfig
    read_targets: tuple[Target, ...]
    write_targets: tuple[Target, ...]
    fallback_body: bytes | None

    @property
    def label(self) -> str:
        return TOOL_PREFIX + self.name

    @classmethod
    def of(cls, name: str, cfg: ToolConfig) -> ToolRoute:
        args = (name, TOOL_PREFIX + name, cfg.retry, cfg.timeouts.first_byte_s)
        fallback = cfg.fallback_response
        body = None if fallback is None else (b"" if fallback.json is None else orjson.dumps(fallback.json))
        return cls(name=name, config=cfg, read_targets=tool_targets(*args, read=True),
                   write_targets=tool_targets(*args, read=False), fallback_body=body)


TOOL_ROUTE: StateKey[ToolRoute] = StateKey("tool.route")


def plan_of(ex: Exchange) -> Plan:
    route = ex.state.get(TOOL_ROUTE)
    assert route is not None, "tool exchanges are built with their route"
    return route.read_targets if ex.state.get(TOOL_READ) else route.write_targets


class ToolFallback:
    """Serve ``fallback_response`` when the provider is down; pass everything else through."""

    name = "tool_fallback"

    def __init__(self, metrics: ResilienceMetrics) -> None:
        self.metrics = metrics

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        route = ex.state.get(TOOL_ROUTE)
        assert route is not None, "tool exchanges are built with their route"
        fallback = route.config.fallback_response
        if fallback is None or route.fallback_body is None:
            return await next(ex)
        try:
            resp = await next(ex)
        except (UpstreamFailure, CircuitOpen) as exc:
            ex.record.error_kind = getattr(exc, "kind", None) or "circuit_open"
            return self._serve(ex, fallback, route.fallback_body)
        if resp.status < 500:
            return resp
        await close_body(resp.body)
        ex.record.error_kind = f"http_{resp.status}"
        return self._serve(ex, fallback, route.fallback_body)

    def _serve(self, ex: Exchange, fallback: FallbackResponse, body: bytes) -> UpstreamResponse:
        self.metrics.decision("tool_fallback", "served")
        ex.response_headers.pop("x-should-retry", None)  # a degraded answer, not a failure to retry
        headers = {"content-type": "application/json", **{k.lower(): v for k, v in fallback.headers.items()},
                   "x-gateway-fallback": "true"}
        return UpstreamResponse(fallback.status, headers, OneChunk(body), source="local")


class ToolGateway:
    """The ``/tools/`` handler for one config (``state.components["tool_handler"]``)."""

    def __init__(self, st: AppState, config: Config, res: Resilience) -> None:
        self.st = st
        self.config = config
        self.routes = {name: ToolRoute.of(name, cfg) for name, cfg in config.tools.items()}
        layers = [st.components.get(TOOL_CACHE), ToolFallback(res.metrics),
                  RetryPolicy(res=res, planner=plan_of, clock=st.clock),
                  CircuitBreakerPolicy(res, key_prefix=TOOL_PREFIX)]
        self.chain = build_chain([layer for layer in layers if layer is not None], self._send)

    async def __call__(self, request: web.Request, rid: str) -> web.StreamResponse:
        parts = split_tool_path(request.rel_url.raw_path)
        route = self.routes.get(parts[0]) if parts is not None else None
        if parts is None or route is None:
            return not_found(rid, request)
        build = partial(self._build, request, rid, route, parts[1])
        return await proxy(request, self.st, rid, build, self.chain)

    async def _build(self, request: web.Request, rid: str, route: ToolRoute, raw_rest: str,
                     now: float, identity: Identity) -> Exchange:
        upstream_path = safe_subpath(raw_rest)
        raw = await read_body(request, self.config.server.max_body_bytes, work=self.st.work,
                              tenant=identity.namespace)
        cfg = route.config
        facts = RequestFacts(
            request_id=rid, method=request.method, path=request.path, operation="tool",
            headers=tool_headers(request.headers), received_at=now, deadline=now + cfg.timeouts.total_s,
            route_name=route.label, identity=identity,
            query_string=tool_query(request.rel_url.raw_query_string, cfg.api_key_param),
            upstream_path=upstream_path)
        ex = Exchange(request=facts, target=ExchangeTarget(upstream=route.name), raw_body=raw, body=None)
        ex.state.set(TOOL_ROUTE, route)
        ex.state.set(TOOL_READ, request.method in _READ_METHODS or cfg.read_only)
        return ex

    async def _send(self, ex: Exchange) -> UpstreamResponse:
        return await self.st.tools[ex.target.upstream].send(ex)


def sync_tool_clients(st: AppState, config: Config) -> None:
    """One pooled client per tool; a reload keeps the clients whose config did not change."""
    known = st.components.setdefault(_CONFIGS, {})
    for name, cfg in config.tools.items():
        if name in st.tools and known.get(name) == cfg:
            continue
        client = make_tool_client(name, cfg)
        st.tools[name] = client
        known[name] = cfg
        st.closers.append(client.close)  # the replaced client (if any) is closed at shutdown too


async def factory(state: AppState, config: Config) -> None:
    """(Re)builds the ``/tools/`` handler (a route handler of the registry, not a layer)."""
    res = resilience_of(state, config)
    install_sink(state)
    sync_tool_clients(state, config)
    if config.tools:
        handler: RouteHandler = ToolGateway(state, config, res)
        state.components.set(TOOL_HANDLER, handler)
    else:
        state.components.pop(TOOL_HANDLER)
