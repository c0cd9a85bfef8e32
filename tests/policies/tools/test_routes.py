"""Tool routes in-process: read/write plans, fallback_response, and the factory's client reuse on reload."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.body import OneChunk
from gateway.components import BREAKER_STATES, TOOL_CACHE, TOOL_HANDLER, TOOL_READ
from gateway.config import parse_config
from gateway.errors import UpstreamFailure
from gateway.exchange import Exchange, LayerState, UpstreamResponse
from gateway.telemetry.metrics import Metrics
from policies.resilience.breaker import CircuitOpen
from policies.resilience.config import RetryConfig
from policies.resilience.metrics import ResilienceMetrics
from policies.tools.config import ToolConfig
from policies.tools.routes import TOOL_ROUTE, ToolFallback, ToolGateway, ToolRoute, factory, plan_of
from tests.support.exchange import build_exchange


def tool_exchange(route: ToolRoute, read: bool) -> Exchange:
    ex = build_exchange(request_id="r", method="GET" if read else "POST", path=f"/tools/{route.name}/x",
                  operation="tool", headers=CIMultiDictProxy(CIMultiDict()), raw_body=b"", body=None,
                  received_at=0.0, deadline=10.0, route_name=route.label, upstream=route.name)
    ex.state.set(TOOL_ROUTE, route)
    ex.state.set(TOOL_READ, read)
    return ex


def test_reads_retry_writes_do_not() -> None:
    """A read gets the tool's retry config; a write gets exactly one attempt; both keyed tool:<name>."""
    route = ToolRoute.of("quotes", ToolConfig(base_url="http://x", retry=RetryConfig(max_attempts=5)))
    read, write = plan_of(tool_exchange(route, True)), plan_of(tool_exchange(route, False))
    assert read[0].retry.max_attempts == 5 and write[0].retry.max_attempts == 1
    assert read[0].key == write[0].key == "tool:quotes" and len(read) == len(write) == 1


class Closable:
    def __init__(self) -> None:
        self.closed = False

    def __aiter__(self) -> Closable:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


def with_fallback() -> ToolRoute:
    fallback = {"status": 200, "json": {"note": "later"}, "headers": {"X-Extra": "1"}}
    config = parse_config({"upstreams": {"u": {"base_url": "http://x"}},
                           "tools": {"down": {"base_url": "http://x", "fallback_response": fallback}}}, {})
    return ToolRoute.of("down", config.tools["down"])


@pytest.mark.parametrize("outcome", [UpstreamFailure("connect_error", "x"), CircuitOpen("tool:down", 3), 503])
async def test_fallback_served_when_down(outcome: Any) -> None:
    """Failures, an open breaker and 5xx answers become the fallback_response, marked x-gateway-fallback."""
    metrics = Metrics()
    layer = ToolFallback(ResilienceMetrics(metrics))
    body = Closable()

    async def next(ex: Exchange) -> UpstreamResponse:
        if isinstance(outcome, int):
            return UpstreamResponse(outcome, {}, body)
        raise outcome

    ex = tool_exchange(with_fallback(), True)
    ex.response_headers["x-should-retry"] = "false"
    resp = await layer(ex, next)
    assert resp.status == 200 and resp.source == "local"
    assert resp.headers["x-gateway-fallback"] == "true" and resp.headers["x-extra"] == "1"
    assert b"".join([c async for c in resp.body]) == b'{"note":"later"}'
    assert "x-should-retry" not in ex.response_headers and ex.record.error_kind
    assert body.closed or not isinstance(outcome, int)
    assert metrics.registry.get_sample_value("gateway_policy_decisions_total",
                                             {"policy": "tool_fallback", "decision": "served"}) == 1


async def test_no_fallback_or_healthy_passes_through() -> None:
    """4xx answers pass; without fallback_response a failure propagates."""
    layer = ToolFallback(ResilienceMetrics(Metrics()))

    async def not_found(ex: Exchange) -> UpstreamResponse:
        return UpstreamResponse(404, {}, OneChunk(b"nf"))

    assert (await layer(tool_exchange(with_fallback(), True), not_found)).status == 404

    async def failing(ex: Exchange) -> UpstreamResponse:
        raise UpstreamFailure("connect_error", "x")

    plain = ToolRoute.of("plain", ToolConfig(base_url="http://x"))
    with pytest.raises(UpstreamFailure):
        await layer(tool_exchange(plain, True), failing)


def app_state() -> SimpleNamespace:
    return SimpleNamespace(components=LayerState(), finalizers=[], metrics=Metrics(), clock=lambda: 0.0,
                           tools={}, closers=[], sinks=[], backend=None)


def tools_config(**quotes: Any):  # type: ignore[no-untyped-def]
    return parse_config({"upstreams": {"u": {"base_url": "http://127.0.0.1:9"}},
                         "tools": {"quotes": {"base_url": "http://127.0.0.1:9", **quotes},
                                   "news": {"base_url": "http://127.0.0.1:9"}}}, {})


async def test_factory_installs_handler_and_reuses_clients_on_reload() -> None:
    """The factory adds the /tools/ handler and one client per tool; a reload keeps unchanged clients."""
    st = app_state()
    assert await factory(st, tools_config()) is None  # type: ignore[arg-type]
    handler = st.components[TOOL_HANDLER]
    assert isinstance(handler, ToolGateway) and set(st.tools) == {"quotes", "news"}
    assert {name for name, _, _ in st.components[BREAKER_STATES]()} >= {"tool:quotes", "tool:news"}
    quotes, news = st.tools["quotes"], st.tools["news"]
    await factory(st, tools_config(read_only=True))  # type: ignore[arg-type]
    assert st.tools["news"] is news and st.tools["quotes"] is not quotes
    assert st.components[TOOL_HANDLER] is not handler and len(st.closers) == 3
    await factory(st,
                  parse_config({"upstreams": {"u": {"base_url": "http://127.0.0.1:9"}}},
                               {}))  # type: ignore[arg-type]
    assert TOOL_HANDLER not in st.components
    for close in st.closers:
        await close()


async def test_tool_cache_slot_is_outermost() -> None:
    """A policy registered as components['tool_cache'] becomes the outermost layer of tool routes."""
    st = app_state()
    seen: list[str] = []

    class Cache:
        name = "tool_cache"

        async def __call__(self, ex: Exchange, next: Any) -> UpstreamResponse:
            seen.append(ex.request.route_name)
            return UpstreamResponse(200, {}, OneChunk(b"cached"), source="cache")

    st.components[TOOL_CACHE] = Cache()
    await factory(st, tools_config())  # type: ignore[arg-type]
    gateway: ToolGateway = st.components[TOOL_HANDLER]
    resp = await gateway.chain(tool_exchange(gateway.routes["quotes"], True))
    assert resp.source == "cache" and seen == ["tool:quotes"]
    for close in st.closers:
        await close()
