"""The onion's fixed order, outermost first, and how each layer is built.

Users configure policies; they do not reorder them. Each entry of ``LAYERS`` is a
factory ``async (state, runtime_config) -> Policy | None`` (None: the layer is off
for this config). Adding a layer is one line here; ``tests/policies/test_registry.py``
pins the order.

``ROUTE_HANDLERS`` are not layers: they (re)build handlers for other paths
(``/tools/...``) from the same layer classes, after every layer is built, so
they can reuse components the layers registered (the tool routes' cache).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.appstate import AppState
from gateway.chain import Policy
from gateway.config_model import Config
from policies.cache import coalesce_layer as coalesce
from policies.cache import embeddings_layer as embeddings_cache
from policies.cache import exact_layer as exact_cache
from policies.cache import semantic_layer as semantic_cache
from policies.compression.budgets_layer import make_budget
from policies.compression.layer import make_compression
from policies.mcp import entry as mcp
from policies.ratelimit import client_layer as rate_limit_client
from policies.ratelimit import upstream_layer as rate_limit_upstream
from policies.resilience import breaker_layer as circuit_breaker
from policies.resilience import retry_layer as retry
from policies.tools import routes as tools
from policies.tracing.layer import attempt_span_factory, request_span_factory
from policies.usage.layer import usage_factory

PolicyFactory = Callable[[AppState, Config], Awaitable[Policy | None]]
HandlerFactory = Callable[[AppState, Config], Awaitable[None]]

LAYERS: tuple[tuple[str, PolicyFactory], ...] = (
    # outermost: inflight, stream usage injected/stripped, chunks kept for estimates
    ("usage", usage_factory),
    ("tracing", request_span_factory),  # request span (None when tracing is off)
    ("exact_cache", exact_cache.factory),  # key taken here, before compression changes the body
    ("embeddings_cache", embeddings_cache.factory),  # /v1/embeddings only: per-input cache, micro-batching
    ("semantic_cache", semantic_cache.factory),  # opt-in; embeds the last user message off the loop
    ("coalesce", coalesce.factory),  # single flight, inside the caches, outside rate limits
    ("rate_limit_client",
     rate_limit_client.factory),  # after caches/coalesce (hits spend no quota): 429 at once
    ("compression", make_compression),  # after rate_limit (client), after the cache key, before retry
    ("budget", make_budget),  # right inside compression: classes see the compressed prompt size
    ("retry", retry.factory),  # retries, fallbacks and the stream commit point; each attempt goes inward
    ("circuit_breaker", circuit_breaker.factory),  # inside retry: the breaker sees every attempt
    ("rate_limit_upstream",
     rate_limit_upstream.factory),  # after retry+breaker: each attempt queues for its quota
    ("tracing_upstream", attempt_span_factory),  # keep LAST: one span + traceparent per upstream attempt
)
ROUTE_HANDLERS: tuple[tuple[str, HandlerFactory], ...] = (
    ("tools", tools.factory),  # /tools/{name}/...: retries, breakers, fallbacks and the read cache per tool
    ("mcp", mcp.factory),  # /mcp/{server}: MCP Streamable HTTP proxy, safety-aware retries and caches
)


async def build_policies(state: AppState, config: Config) -> list[Policy]:
    """The layers this config turns on, outermost first; then the other paths' handlers."""
    built: list[Policy] = []
    for _name, factory in LAYERS:
        policy = await factory(state, config)
        if policy is not None:
            built.append(policy)
    for _name, build_handler in ROUTE_HANDLERS:
        await build_handler(state, config)
    return built
