"""``GET /admin/usage?group_by=tenant|model|route|upstream&since=&until=``: ledger totals per group.

Needs the admin key (``gateway.admin_auth.check_admin``). ``since``/``until``
accept epoch seconds, ISO 8601 (``2025-01-31T12:00:00Z``; no zone means UTC)
or a duration back from now (``90s``, ``15m``, ``24h``, ``7d``). Defaults:
everything retained, up to now. Records still queued in this process are
written first, so a caller sees its own traffic at once.
"""
from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from aiohttp import web

from gateway.admin_auth import check_admin
from gateway.appstate import APP_STATE
from gateway.errors import LocalReply
from gateway.handler import error_response, json_response, request_id_of
from policies.ledger.record import GROUP_BY

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(value: str, now: float, param: str) -> float:
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    ago = _AGO.match(text)
    if ago:
        return now - float(ago.group(1)) * _UNIT_S[ago.group(2)]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise LocalReply(400, f"`{param}` must be epoch seconds, ISO 8601 or a duration like 24h.",
                         param=param, code="invalid_time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


async def handle_usage(request: web.Request) -> web.StreamResponse:
    rid = request_id_of(request)
    try:
        await check_admin(request)
        ledger = request.app[APP_STATE].ledger
        if ledger is None:
            raise LocalReply(404, "The usage ledger is disabled (ledger.enabled: false).",
                             code="ledger_disabled")
        group_by = request.query.get("group_by", "tenant")
        if group_by not in GROUP_BY:
            raise LocalReply(400, f"`group_by` must be one of {', '.join(GROUP_BY)}.", param="group_by",
                             code="invalid_group_by")
        now = time.time()
        since = parse_time(request.query["since"], now, "since") if request.query.get("since") else 0.0
        until = parse_time(request.query["until"], now, "until") if request.query.get("until") else now
        groups = await ledger.query(group_by, since, until)
    except LocalReply as reply:
        return error_response(rid, reply)
    return json_response(rid, {"group_by": group_by, "since": since, "until": until, "groups": groups})


def add_usage_route(app: web.Application) -> None:
    app.router.add_get("/admin/usage", handle_usage)
