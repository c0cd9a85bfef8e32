"""``GET /metrics``: the Prometheus exposition of the app's registry.

Served on the main port, and also on ``metrics.port`` when set (so a scrape
can stay inside the pod network while the API port is exposed). The
exposition is one function, ``render_metrics``, so a multi-process setup can
swap in an aggregating collector without touching the routes. No
authentication: metrics carry only bounded labels and no secrets.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.appstate import APP_STATE, AppState
from gateway.config_model import Config


def render_metrics(state: AppState) -> bytes:
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    # One of N workers (gateway.supervisor): every worker's values, whichever one is scraped.
    if multiproc_dir:
        registry = CollectorRegistry()
        # prometheus_client.multiprocess is untyped: the collector registers itself in ``registry``
        collect_into = cast(Callable[[CollectorRegistry, str], object], MultiProcessCollector)
        collect_into(registry, multiproc_dir)
        return generate_latest(registry)
    return generate_latest(state.metrics.registry)


async def handle_metrics(request: web.Request) -> web.Response:
    st = request.app[APP_STATE]
    if not st.config.metrics.enabled or st.metrics is None:
        return web.Response(status=404, text="metrics are disabled (metrics.enabled: false)\n")
    return web.Response(body=render_metrics(st), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_metrics_route(app: web.Application) -> None:
    app.router.add_get("/metrics", handle_metrics)


async def start_metrics_server(st: AppState, config: Config) -> None:
    """Serve ``/metrics`` alone on ``metrics.port``; its runner is closed with the app."""
    port = config.metrics.port
    if not config.metrics.enabled or not port:
        return
    app = web.Application()
    app[APP_STATE] = st
    add_metrics_route(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    # With --workers N every worker binds the metrics port too (SO_REUSEPORT), each answering for all.
    site = web.TCPSite(
        runner, config.server.host, port, reuse_address=True, reuse_port=st.workers > 1 or None
    )
    await site.start()
    st.closers.append(runner.cleanup)
