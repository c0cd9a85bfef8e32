"""gateway.app: encodings are loaded before serving only when a built layer counts every prompt; the
shared state backend's gauge and transitions."""
from __future__ import annotations

from functools import partial
from typing import Any

from openai import AsyncOpenAI

from gateway.appstate import APP_STATE
from gateway.mock import MockServer
from policies.ratelimit.runtime import COMPONENT as LIMITER
from tests.support.servers import (
    InProcessGateway,
    RedisServer,
    free_port,
    gateway_config,
    redis_server_binary,
    start_gateway,
)
from tests.support.until import until


async def _loaded(mock_upstream: MockServer, **overrides: object) -> bool:
    gw = await start_gateway(gateway_config(mock_upstream.url, **overrides))
    try:
        return gw.app[APP_STATE].tokenizer.is_loaded("o200k_base")
    finally:
        await gw.close()


async def test_a_prompt_counting_layer_gets_its_encoding_before_the_first_request(
        mock_upstream: MockServer) -> None:
    limits = {"mock": {"base_url": mock_upstream.url, "rate_limit": {"max_concurrency": 4}}}
    assert await _loaded(mock_upstream, upstreams=limits)  # ready means counted without a 0.3 s load


async def test_a_config_that_never_counts_prompts_loads_nothing(mock_upstream: MockServer) -> None:
    assert not await _loaded(mock_upstream)  # the default config: idle memory stays small (issue 21)


def _layers(chain: Any) -> list[str]:
    names = []
    while isinstance(chain, partial):  # gateway.chain binds each layer as a partial around the next one
        bound: Any = chain.func  # a layer's bound ``__call__``
        layer = bound.__self__
        names.append(layer.name)
        chain = chain.keywords["next"]
    return names


async def test_each_operation_has_its_chain_without_the_layers_that_pass_it_on(
        mock_upstream: MockServer) -> None:
    """The default config: chat requests do not enter the embeddings cache, embeddings requests neither the
    answer caches nor the usage layer; the full chain (other paths) keeps every layer (control)."""
    gw = await start_gateway(gateway_config(mock_upstream.url))
    try:
        runtime = gw.app[APP_STATE].runtime
        full, chat, embeddings = (_layers(runtime.chain), _layers(runtime.chain_for("chat")),
                                  _layers(runtime.chain_for("embeddings")))
    finally:
        await gw.close()
    assert {"usage", "exact_cache", "embeddings_cache", "coalesce", "retry"} <= set(full)
    assert chat == [name for name in full if name != "embeddings_cache"]
    assert embeddings == [name for name in full if name not in ("usage", "exact_cache", "coalesce")]


def _sample(gw: InProcessGateway, name: str, **labels: str) -> float | None:
    return gw.state.metrics.registry.get_sample_value(name, labels)


async def test_a_gateway_sharing_only_its_caches_reports_its_backend(mock_upstream: MockServer) -> None:
    """``gateway_state_backend_up`` and its transitions come with the backend, not with the rate limiter:
    a replica sharing only its caches and breakers (no limits configured) says when Redis is away."""
    server = RedisServer(port=free_port(), binary=redis_server_binary() or "")
    server.start()
    state = {"backend": "redis", "redis_url": server.url, "key_prefix": "app-gauge:", "timeout_ms": 500}
    gw = await start_gateway(gateway_config(mock_upstream.url, state=state))
    try:
        assert gw.state.components.get(LIMITER) is None  # no rate limiter was built
        assert _sample(gw, "gateway_state_backend_up") == 1
        server.kill()
        client = AsyncOpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)

        async def declared_down() -> bool:
            await client.chat.completions.create(  # each cache lookup fails fast against the dead port
                model="gpt-4o-mini", temperature=0, messages=[{"role": "user", "content": "gauge"}])
            return _sample(gw, "gateway_state_backend_up") == 0

        await until(declared_down, timeout=10.0, interval=0.01, message="backend declared down")
        assert _sample(gw, "gateway_state_backend_transitions_total", to="down") == 1
        await client.close()
    finally:
        await gw.close()
        server.kill()


async def test_a_shared_backend_is_connected_before_the_gateway_is_ready(mock_upstream: MockServer,
                                                                          redis_server: RedisServer) -> None:
    """Start-up opens the state lane (``GuardedRedis.warm``): the first burst does not pay for the connect."""
    state = {"backend": "redis", "redis_url": redis_server.url, "key_prefix": "app-warm:"}
    gw = await start_gateway(gateway_config(mock_upstream.url, state=state))
    try:
        backend = gw.state.backend
        assert backend is not None and backend.lane is not None and backend.lane.ready and backend.up
    finally:
        await gw.close()


async def test_a_gateway_without_shared_state_reports_no_backend(mock_upstream: MockServer) -> None:
    limits = {"mock": {"base_url": mock_upstream.url, "rate_limit": {"rpm": 100}}}
    gw = await start_gateway(gateway_config(mock_upstream.url, upstreams=limits))
    try:
        assert gw.state.components.get(LIMITER) is not None  # limits alone no longer make the gauge up
        assert _sample(gw, "gateway_state_backend_up") is None
    finally:
        await gw.close()


def _prepare_signals(app: Any) -> int:
    """``on_response_prepare`` receivers of ``app`` and its sub-applications."""
    return len(app.on_response_prepare) + sum(_prepare_signals(sub) for sub in app._subapps)


async def test_the_gateway_registers_no_response_prepare_signal(mock_upstream: MockServer) -> None:
    """``gateway.response_writer`` sends none: a receiver added to the gateway would never run on its
    answers. The control: the fake provider's app has one, and the count sees it."""
    assert _prepare_signals(mock_upstream.app) > 0
    gw = await start_gateway(gateway_config(mock_upstream.url))
    try:
        assert _prepare_signals(gw.app) == 0
    finally:
        await gw.close()
