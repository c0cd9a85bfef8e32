"""``GET /admin/stats`` (live JSON summary) and ``GET /admin/stats/stream`` (the same, once per second, as
SSE).

Both read the in-process rolling windows (``gateway.telemetry.live``) and never
touch the request path. The stream's first event carries the chart rows of the
whole window (``"full": true``) so a page opened late still shows the last 15
minutes; every later event carries the summary plus the rows of the seconds
finished since the previous event. A stream ends by itself when the gateway
starts draining, so an open dashboard never holds up a shutdown.
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from gateway.admin_auth import check_admin
from gateway.appstate import APP_STATE, AppState
from gateway.errors import LocalReply
from gateway.telemetry.live import LiveStats
from gateway.telemetry.live_fleet import fleet_view
from gateway.telemetry.live_view import summary

NO_STORE = {"cache-control": "no-store", "x-content-type-options": "nosniff"}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/stats", handle_stats)
    app.router.add_get("/admin/stats/stream", handle_stats_stream)


async def _admin_state(request: web.Request) -> tuple[AppState, LiveStats]:
    """Raise ``LocalReply`` unless an admin asks and the live stats run."""
    await check_admin(request)
    st = request.app[APP_STATE]
    if st.stats is None:
        raise LocalReply(503, "Live stats are not running.", type="server_error", code="stats_unavailable")
    return st, st.stats


def _reply(reply: LocalReply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body(), content_type="application/json",
                        headers={**reply.headers, **NO_STORE})


async def _still_admin(request: web.Request) -> bool:
    """Checked before every event: a logout or an admin key rotation ends an open stream."""
    try:
        await check_admin(request)
    except LocalReply:
        return False
    return True


async def handle_stats(request: web.Request) -> web.Response:
    """The live summary; ``?series=1`` adds the per-second chart rows of the window."""
    try:
        st, stats = await _admin_state(request)
    except LocalReply as reply:
        return _reply(reply)
    fleet, banner = await fleet_view(st)
    payload: dict[str, Any] = summary(stats, st, fleet=fleet, banner=banner)
    if request.query.get("series") in ("1", "true"):
        payload["series"] = stats.rows()
    return web.Response(body=orjson.dumps(payload), content_type="application/json", headers=NO_STORE)


async def handle_stats_stream(request: web.Request) -> web.StreamResponse:
    """One SSE ``data:`` event per second, aligned just after each second ends."""
    try:
        st, stats = await _admin_state(request)
    except LocalReply as reply:
        return _reply(reply)
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", "x-accel-buffering": "no",
                                       **NO_STORE})
    await resp.prepare(request)
    last: int | None = None
    try:
        await resp.write(b"retry: 2000\n\n")
        while not st.lifecycle.draining and await _still_admin(request):
            rows = stats.rows(since=last)
            fleet, banner = await fleet_view(st)
            event = {"full": last is None, "rows": rows,
                     "summary": summary(stats, st, exact=False, fleet=fleet, banner=banner)}
            if rows:
                last = rows[-1]["sec"]
            elif last is None:
                last = int(stats.clock()) - 1
            await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
            now = stats.clock()
            await asyncio.sleep(1.0 - (now % 1.0) + 0.02)
    except (ConnectionError, RuntimeError):
        pass  # the dashboard went away
    return resp
