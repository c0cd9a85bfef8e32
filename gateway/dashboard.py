"""``GET /admin/dashboard``: the live dashboard page, its login, and its static files.

The page is plain HTML, CSS and JavaScript shipped as package data (no build
step) plus uPlot, vendored from npm with its licence. It reads
``/admin/stats/stream`` and nothing else.

Access uses the admin key without ever putting it in a page, a script or a log:
- a login form POSTs the key; ``?key=`` in the URL (what ``make demo`` prints)
  is accepted once and answered with a redirect that drops it from the URL;
- either way the browser gets an HttpOnly, SameSite=Strict cookie holding a random
  session id whose record is server-side (``admin_auth.AdminSessions``: expiry, revoked
  by logout and by a key rotation), never the key itself;
- login and logout refuse cross-site requests; wrong keys are throttled per address;
- without a valid cookie or bearer key the page answers 401 with the login form;
- the aiohttp access log, when enabled, has any ``key=`` query value redacted.
The pages send a strict Content-Security-Policy (scripts and styles from this
origin only, no inline code), and no Referer.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.admin_auth import (
    COOKIE,
    SESSION_TTL_S,
    check_admin,
    key_matches,
    same_origin,
    sessions_of,
    throttle,
    wrong_key,
)
from gateway.appstate import APP_STATE
from gateway.errors import LocalReply

STATIC = Path(__file__).parent / "static"
PAGE = "/admin/dashboard"
ASSET_PREFIX = "/admin/dashboard/assets/"
SESSION_MAX_AGE_S = SESSION_TTL_S
# name in the URL -> (file under static/, content type, served without a session)
ASSETS: dict[str, tuple[str, str, bool]] = {
    "dashboard.js": ("dashboard/dashboard.js", "text/javascript", False),
    "dashboard.css": ("dashboard/dashboard.css", "text/css", True),  # the login page needs it too
    "uPlot.iife.min.js": ("vendor/uplot/uPlot.iife.min.js", "text/javascript", False),
    "uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css", False),
    "uPlot.LICENSE.txt": ("vendor/uplot/LICENSE", "text/plain", True),
}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}
LOGIN_ERROR = '<p class="login-error" role="alert">That key was not accepted.</p>'


@dataclass(frozen=True, slots=True)
class DashboardFiles:
    """The page and its assets, read once when the app is built (a few tens of kB)."""

    index: bytes
    login: bytes
    assets: dict[str, tuple[bytes, str, bool]]

    @classmethod
    def load(cls, root: Path = STATIC) -> DashboardFiles:
        assets = {name: ((root / rel).read_bytes(), ctype,
                         public) for name, (rel, ctype, public) in ASSETS.items()}
        return cls(index=(root / "dashboard/index.html").read_bytes(),
                   login=(root / "dashboard/login.html").read_bytes(), assets=assets)


DASHBOARD_FILES: web.AppKey[DashboardFiles] = web.AppKey("dashboard_files", DashboardFiles)


def add_routes(app: web.Application) -> None:
    app[DASHBOARD_FILES] = DashboardFiles.load()
    app.router.add_get(PAGE, handle_dashboard)
    app.router.add_post(PAGE + "/login", handle_login)
    app.router.add_post(PAGE + "/logout", handle_logout)
    app.router.add_get(ASSET_PREFIX + "{name}", handle_asset)
    _redact_access_log()


def _html(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="text/html", charset="utf-8",
                        headers=SECURITY_HEADERS)


def _login_page(request: web.Request, status: int = 401, error: bool = False) -> web.Response:
    page = request.app[DASHBOARD_FILES].login
    if error:
        page = page.replace(b"<!--login-error-->", LOGIN_ERROR.encode())
    return _html(page, status)


def _disabled(reply: LocalReply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body(), content_type="application/json",
                        headers=SECURITY_HEADERS)


def _configured_key(request: web.Request) -> str:
    return request.app[APP_STATE].config.admin.api_key or ""


def _key_matches(request: web.Request, presented: str) -> bool:
    """The admin key? (raises the 429 of a throttled address first; counts a wrong key)."""
    throttle(request)
    if key_matches(_configured_key(request), presented):
        return True
    wrong_key(request)
    return False


def _cross_site(request: web.Request) -> web.Response | None:
    if same_origin(request):
        return None
    request.app[APP_STATE].metrics.decision("admin_auth", "cross_site")
    return _disabled(LocalReply(403, "Cross-site admin requests are refused.", type="permission_error",
                                code="cross_site_request"))


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={**SECURITY_HEADERS, "location": location})


async def _signed_in(request: web.Request, location: str) -> web.Response:
    """Redirect with a new session's cookie: a random id, HttpOnly, SameSite=Strict."""
    st = request.app[APP_STATE]
    sid = await sessions_of(st).create(st, _configured_key(request))
    st.metrics.decision("admin_auth", "session_created")
    resp = _redirect(location)
    resp.set_cookie(COOKIE, sid, path="/admin", httponly=True, samesite="Strict", secure=request.secure,
                    max_age=SESSION_MAX_AGE_S)
    return resp


async def handle_dashboard(request: web.Request) -> web.Response:
    """The page for an admin; the login form (401) for anyone else; ``?key=`` becomes a cookie."""
    if not _configured_key(request):
        return _disabled(LocalReply(404, "Admin API is disabled: set admin.api_key to enable it.",
                                    code="admin_disabled"))
    try:
        if "key" in request.query:
            if _key_matches(request, request.query.get("key", "")):
                return await _signed_in(request, PAGE)
            return _redirect(PAGE + "?error=1")
        await check_admin(request)
    except LocalReply as reply:
        if reply.status == 429:
            return _disabled(reply)
        return _login_page(request, error=request.query.get("error") == "1")
    return _html(request.app[DASHBOARD_FILES].index)


async def handle_login(request: web.Request) -> web.Response:
    """The login form's POST: the key travels in the body, never in a URL."""
    if not _configured_key(request):
        return _disabled(LocalReply(404, "Admin API is disabled.", code="admin_disabled"))
    refused = _cross_site(request)
    if refused is not None:
        return refused
    form = await request.post()
    presented = form.get("key")
    try:
        if isinstance(presented, str) and _key_matches(request, presented.strip()):
            return await _signed_in(request, PAGE)
    except LocalReply as reply:
        return _disabled(reply)
    return _login_page(request, error=True)


async def handle_logout(request: web.Request) -> web.Response:
    """Revokes the session server-side (the cookie is worthless afterwards, wherever it was copied)."""
    refused = _cross_site(request)
    if refused is not None:
        return refused
    st = request.app[APP_STATE]
    sid = request.cookies.get(COOKIE, "")
    if sid:
        await sessions_of(st).revoke(st, sid)
        st.metrics.decision("admin_auth", "session_revoked")
    resp = _redirect(PAGE)
    resp.del_cookie(COOKIE, path="/admin")
    return resp


async def handle_asset(request: web.Request) -> web.Response:
    if not _configured_key(request):
        return _disabled(LocalReply(404, "Admin API is disabled.", code="admin_disabled"))
    asset = request.app[DASHBOARD_FILES].assets.get(request.match_info["name"])
    if asset is None:
        return _disabled(LocalReply(404, "No such dashboard file.", code="not_found"))
    body, ctype, public = asset
    if not public:
        try:
            await check_admin(request)
        except LocalReply as reply:
            return _disabled(reply)
    return web.Response(body=body, headers={**SECURITY_HEADERS, "content-type": ctype + "; charset=utf-8"})


# The dashboard's ?key= and every query parameter a provider reads a key from (gateway.auth.CREDENTIAL_QUERY).
_KEY_IN_QUERY = re.compile(r"([?&](?:key|api_key|api-key|apikey|access_token|token)=)[^&\s\"]*",
                           re.IGNORECASE)


class RedactKeyFilter(logging.Filter):
    """Blank ``key=`` query values in aiohttp access-log lines (the dashboard's ``?key=`` link)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "key=" in record.msg:
            record.msg = _KEY_IN_QUERY.sub(r"\1[redacted]", record.msg)
        line = getattr(record, "first_request_line", None)
        if isinstance(line, str) and "key=" in line:
            record.first_request_line = _KEY_IN_QUERY.sub(r"\1[redacted]", line)
        return True


def _redact_access_log() -> None:
    access = logging.getLogger("aiohttp.access")
    if not any(isinstance(f, RedactKeyFilter) for f in access.filters):
        access.addFilter(RedactKeyFilter())
