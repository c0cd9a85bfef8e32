"""Build the aiohttp application: routes, start-up and shutdown of pools and policies."""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from gateway import admin_stats, dashboard
from gateway.appstate import APP_STATE, AppState, Runtime
from gateway.auth import Authenticator
from gateway.chain import Next, build_chain
from gateway.config_model import Config
from gateway.dispatch import API_ROUTES, api_route
from gateway.exchange import Exchange, UpstreamResponse
from gateway.handler import OPERATIONS, expect_continue, handle_api, openai_errors
from gateway.health import handle_healthz, handle_readyz
from gateway.metrics_endpoint import add_metrics_route
from gateway.models_api import handle_models
from gateway.passthrough import handle_other
from gateway.routing import Router
from gateway.state.host_state import HOST_STATE_ENV
from gateway.telemetry.live_fleet import start_fleet_stats
from gateway.telemetry.live_view import create_live_stats
from gateway.telemetry.logging import log_request
from gateway.telemetry.loop_lag import start_lag_probe
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.observability import start_observability
from gateway.tokens.pool import WorkPool
from gateway.tokens.tokenizer import DEFAULT_ENCODING, Tokenizer
from gateway.upstream import UpstreamClient
from policies.ledger.admin import add_usage_route
from policies.registry import build_policies

if TYPE_CHECKING:
    from gateway.state.redis_client import GuardedRedis

log = logging.getLogger("gateway.app")
# A shared backend's first connect, made at start-up (``GuardedRedis.warm``): bounded so that a Redis that is
# away (refused at once) or silent (blackholed) delays start-up by at most this.
WARM_S = 1.0


def terminal(st: AppState) -> Next:
    """The innermost layer: send to the exchange's current upstream with its effective timeouts."""

    async def send(ex: Exchange) -> UpstreamResponse:
        route = ex.request.route
        timeouts = (route.timeouts if route is not None and route.timeouts
                    and ex.target.upstream == route.upstream else None)
        return await st.upstreams[ex.target.upstream].send(ex, timeouts)

    return send


async def build_runtime(st: AppState, config: Config) -> Runtime:
    """Everything derived from one config; a reload builds a new one and swaps it in."""
    policies = await build_policies(st, config)
    innermost = terminal(st)
    chain = build_chain(policies, innermost)
    chains = {operation: build_chain(policies, innermost, operation) for operation in OPERATIONS.values()}
    counts = any(getattr(p, "counts_prompts", False) for p in policies)
    if counts:
        await warm_encodings(st, config)
    return Runtime(config=config, router=Router(config.routes), auth=Authenticator(config.auth), chain=chain,
                   policies=policies, chains=chains, counts_prompts=counts)


async def warm_encodings(st: AppState, config: Config) -> None:
    """Load the encodings a prompt-counting layer will need, in a thread, before the runtime serves.

    Without this the first requests after start wait for the load (~0.2-0.5 s) on their TTFT; a config
    whose layers never count prompts (the default) loads nothing (issue 21: idle memory).
    """
    tokenizer = st.tokenizer
    names = {tokenizer.encoding_name_for(model) for model in known_models(config)} | {DEFAULT_ENCODING}
    await asyncio.get_running_loop().run_in_executor(None, tokenizer.preload, sorted(names))


def build_app(config: Config, config_path: str | None = None) -> web.Application:
    app = web.Application(client_max_size=config.server.max_body_bytes + 1024, handler_args=None,
                          middlewares=[openai_errors])
    app[API_ROUTES] = {path: api_route(app, app.router.add_route("*", path, handle_api,
                                                                 expect_handler=expect_continue), operation)
                       for path, operation in OPERATIONS.items()}
    app.router.add_route("*", "/v1/models", handle_models)
    app.router.add_route("*", "/v1/models/{model_id:.+}", handle_models)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    add_metrics_route(app)
    add_usage_route(app)
    admin_stats.add_routes(app)  # /admin/stats, /admin/stats/stream
    dashboard.add_routes(app)  # /admin/dashboard
    app.cleanup_ctx.append(_lifespan(config, config_path))
    app.router.add_route("*", "/{tail:.*}", handle_other, expect_handler=expect_continue)
    return app


def _lifespan(config: Config, config_path: str | None):  # type: ignore[no-untyped-def]
    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        placeholder = Runtime(config=config, router=Router(config.routes), auth=Authenticator(config.auth),
                              chain=terminal_placeholder)
        st = AppState(runtime=placeholder, config_path=config_path)
        app[APP_STATE] = st
        st.upstreams = {name: UpstreamClient.create(name, cfg) for name, cfg in config.upstreams.items()}
        st.closers.extend(client.close for client in st.upstreams.values())
        st.sinks.append(log_request)
        st.metrics = Metrics(known_models(config))
        st.tokenizer = Tokenizer({name: m.encoding for name, m in config.models.items() if m.encoding})
        st.work = WorkPool(threads=config.server.work_threads, budget_s=config.server.work_budget_s,
                           metrics=st.metrics, clock=st.clock)
        st.work.start()
        st.closers.insert(0, _closing(st.work))
        st.closers.append(start_lag_probe(st.metrics, st.clock))
        st.backend = shared_backend(config, st.clock)
        if st.backend is not None:
            st.closers.append(st.backend.close)
            watch_backend(st)
            await st.backend.warm(WARM_S)  # the first burst must not pay (and count) the first connect
        try:
            await start_observability(st, config)  # metrics sink, usage accounting, tracing, ledger
            st.stats = create_live_stats(st)  # after accounting: sees the settled usage and cost
            st.sinks.append(st.stats.record)
            start_fleet_stats(st)  # with a shared backend: publish our windows, read the fleet's
            st.runtime = await build_runtime(st, config)
            st.lifecycle.ready = True
            yield
        finally:
            st.lifecycle.ready = False
            for close in reversed(st.closers):
                try:
                    await close()
                except Exception:
                    log.exception("error while closing a component")

    return lifespan


def _closing(pool: WorkPool) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        pool.close()

    return close


def shared_backend(config: Config, clock: Callable[[], float]) -> GuardedRedis | None:
    """Redis for the fleet (``state.backend: redis``), else the supervisor's host-local one, else none.

    redis-py is imported only when one is used (``gateway.state.errors`` says why)."""
    host_url = None if config.state.backend == "redis" else os.environ.get(HOST_STATE_ENV)
    if config.state.backend != "redis" and not host_url:
        return None
    from gateway.state.redis_client import GuardedRedis  # noqa: PLC0415 - not imported unless used

    return GuardedRedis.from_config(config.state, clock, url=host_url)


def watch_backend(st: AppState) -> None:
    """``gateway_state_backend_up`` (1 while the shared state backend answers) and
    ``gateway_state_backend_transitions_total{to}`` (each time it is declared down, its breaker open and
    every feature on local state, or up again: the flaps between scrapes). Whichever features use the
    backend: a gateway sharing only its breakers or caches reports it too (it was once the rate limiter's)."""
    if st.metrics is None or st.backend is None:
        return
    gauge = st.metrics.gauge("gateway_state_backend_up", "1 when the shared state backend answers, else 0",
                             multiprocess_mode="livemin")
    family = st.metrics.counter("gateway_state_backend_transitions_total",
                                "Times the shared state backend was declared down or up again", ("to",))
    down, up = family.labels("down"), family.labels("up")
    gauge.set(1 if st.backend.up else 0)

    def changed(is_up: bool) -> None:
        gauge.set(1 if is_up else 0)
        (up if is_up else down).inc()

    st.backend.listeners.append(changed)


def known_models(config: Config) -> set[str]:
    """Model names allowed as metric labels: literal route patterns, rewrites, fallbacks, models:,
    pricing:."""
    names = set(config.models) | set(config.pricing) | set(config.metrics.models)
    for route in config.routes:
        if not any(c in route.match.model for c in "*?["):
            names.add(route.match.model)
        if route.model:
            names.add(route.model)
        names.update(fb.model for fb in route.fallbacks if fb.model)
    return names


async def terminal_placeholder(ex: Exchange) -> UpstreamResponse:
    raise RuntimeError("the gateway is not started")
