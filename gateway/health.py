"""Liveness and readiness: /healthz says the process serves; /readyz says send traffic."""
from __future__ import annotations

from aiohttp import web

from gateway.appstate import APP_STATE


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    life = request.app[APP_STATE].lifecycle
    if life.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not life.ready:
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response({"status": "ready"})
