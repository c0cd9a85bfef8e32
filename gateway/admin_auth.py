"""Admin access: ``admin.api_key`` as a bearer token, or a session cookie for the dashboard.

Without a configured key every admin endpoint is off (404), so nothing is
exposed by accident. The key is compared in constant time and never echoed:
the dashboard exchanges it once for an HttpOnly cookie holding an HMAC of the
key, not the key itself.
"""
from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from gateway.appstate import APP_STATE
from gateway.errors import LocalReply

COOKIE = "gw_admin"


def session_token(api_key: str) -> str:
    return hmac.new(api_key.encode(), b"gateway-admin-session", hashlib.sha256).hexdigest()


def check_admin(request: web.Request) -> None:
    """Raise ``LocalReply`` 404 (admin off) or 401 unless the request is an admin's."""
    key = request.app[APP_STATE].config.admin.api_key
    if not key:
        raise LocalReply(404, "Admin API is disabled: set admin.api_key to enable it.", code="admin_disabled")
    auth = request.headers.get("authorization", "")
    presented = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if presented and hmac.compare_digest(presented.encode(), key.encode()):
        return
    cookie = request.cookies.get(COOKIE, "")
    if cookie and hmac.compare_digest(cookie.encode(), session_token(key).encode()):
        return
    raise LocalReply(401, "Admin key required.", type="invalid_request_error", code="invalid_api_key")
