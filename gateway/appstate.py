"""What lives on the application object: config-derived runtime and long-lived parts.

``Runtime`` holds everything derived from one config (router, auth, policy
chain); a reload builds a new one and swaps it in one assignment, so a request
sees one consistent config from start to end. ``AppState`` holds what outlives
a config: upstream pools, shared-state backends, metrics, the drain lifecycle.
Components created by policies register here instead of in module globals.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.admission import Admission
from gateway.auth import Authenticator
from gateway.chain import Next, Policy
from gateway.config_model import Config
from gateway.exchange import Exchange, LayerState
from gateway.received import ReceiveBudget
from gateway.routing import Router
from gateway.telemetry.metrics import Metrics, RequestMetrics
from gateway.tokens.pool import WorkPool
from gateway.tokens.tokenizer import Tokenizer
from gateway.upstream import UpstreamClient
from gateway.workers import workers_from_env

if TYPE_CHECKING:
    from gateway.state.redis_client import GuardedRedis
    from gateway.telemetry.live import LiveStats
    from policies.ledger.writer import LedgerWriter
    from policies.tracing.tracer import Tracing

Sink = Callable[[Exchange], None]
Closer = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class Runtime:
    config: Config
    router: Router
    auth: Authenticator
    chain: Next
    policies: list[Policy] = field(default_factory=list)
    # Per operation of the API paths, the chain without the layers that pass its requests on untouched
    # (``gateway.chain.build_chain``); an operation not listed takes ``chain``.
    chains: dict[str, Next] = field(default_factory=dict)
    # A built layer reads every request's prompt size (``counts_prompts = True`` on its class: rate limits,
    # budgets, compression): the first request loads the encoding off the loop. Without one, nothing is
    # counted up front and encodings load only if a count is ever asked for.
    counts_prompts: bool = False

    def chain_for(self, operation: str) -> Next:
        return self.chains.get(operation) or self.chain


@dataclass(slots=True)
class Lifecycle:
    """Drain bookkeeping: which requests are open and whether shutdown has begun."""

    ready: bool = False
    draining: bool = False
    drain_expired: bool = False
    active: set[asyncio.Task[Any]] = field(default_factory=set)
    idle: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True, kw_only=True)
class AppState:
    runtime: Runtime
    upstreams: dict[str, UpstreamClient] = field(default_factory=dict)
    tools: dict[str, UpstreamClient] = field(default_factory=dict)
    # Each finished Exchange goes through the finalizers (which settle the record: usage, cost), then the
    # sinks (which only read it, in any order).
    finalizers: list[Sink] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    closers: list[Closer] = field(default_factory=list)  # run at shutdown, last registered first
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    # time.monotonic is the event loop's timebase (asyncio uses it; uvloop's libuv clock is CLOCK_MONOTONIC
    # too) at full resolution: uvloop's loop.time() moves in whole milliseconds, too coarse for TTFT and
    # gateway-overhead figures. Deadlines computed from it can be passed to asyncio.timeout_at.
    clock: Callable[[], float] = time.monotonic
    config_path: str | None = None
    # Worker processes sharing this port (``--workers``; 1 when not supervised). Memory-backend limits
    # divide by it so N workers together admit what one process would (docs/kubernetes.md).
    workers: int = field(default_factory=workers_from_env)
    # Long-lived components, filled in by the features that own them (None when off).
    tokenizer: Tokenizer = field(default_factory=lambda: Tokenizer({}))
    metrics: Metrics = field(default_factory=lambda: Metrics(set()))
    work: WorkPool = field(default_factory=WorkPool)  # off-loop CPU work, fair between tenants
    admission: Admission = field(default_factory=Admission)  # per-client in-flight and body-reading counts
    receiving: ReceiveBudget = field(default_factory=ReceiveBudget)  # bytes of prefaulted bodies arriving
    request_metrics: RequestMetrics | None = None
    tracer: Tracing | None = None
    backend: GuardedRedis | None = None
    ledger: LedgerWriter | None = None
    stats: LiveStats | None = None
    # Feature components under typed keys (``StateKey[T]``), declared by the feature that owns them.
    components: LayerState = field(default_factory=LayerState)

    @property
    def config(self) -> Config:
        return self.runtime.config


APP_STATE: web.AppKey[AppState] = web.AppKey("gateway_state", AppState)
