"""Admin access: ``admin.api_key`` as a bearer token, or a session cookie for the dashboard.

Without a configured key every admin endpoint is off (404), so nothing is exposed by accident. The
key is compared in constant time and never echoed. The dashboard exchanges it for a session like a
web app's: a random id (the cookie) whose record lives server-side, in Redis when a state backend is
configured (shared by every worker and replica) and in this process otherwise. The record holds the
issue time, the expiry and an HMAC of the id under the admin key: logout deletes it, and rotating the
key revokes every session at once (the HMAC no longer matches). Redis sees only the id's SHA-256 in
key names. Wrong admin keys are throttled per client address; login and logout refuse cross-site
requests (``Origin``/``Sec-Fetch-Site``).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time

import orjson
from aiohttp import web

from gateway.appstate import APP_STATE, AppState
from gateway.errors import LocalReply
from gateway.exchange import StateKey

log = logging.getLogger("gateway.admin")
COOKIE = "gw_admin"
SESSION_TTL_S = 12 * 3600
_UNAVAILABLE = object()
MAX_FAILURES = 10  # wrong keys per client address and window, then 429 until the window ends
FAILURE_WINDOW_S = 60.0
MAX_TRACKED = 10000  # bounded memory for the per-address failure counts and local sessions


class AdminSessions:
    """Server-side session records (``st.backend`` when Redis is configured) and wrong-key counts."""

    def __init__(self) -> None:
        self.local: dict[str, tuple[float, float, str]] = {}  # sha256(id) -> (issued, expires, hmac)
        self.failures: dict[str, tuple[float, int]] = {}  # client address -> (window start, count)

    @staticmethod
    def _seal(key: str, sid: str) -> str:
        return hmac.new(key.encode(), sid.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _redis_key(st: AppState, sid: str) -> str:
        return f"{st.config.state.key_prefix}admin:session:{hashlib.sha256(sid.encode()).hexdigest()}"

    async def create(self, st: AppState, key: str) -> str:
        sid, now = secrets.token_urlsafe(32), time.time()
        record = (now, now + SESSION_TTL_S, self._seal(key, sid))
        if len(self.local) >= MAX_TRACKED:
            self.local = {k: v for k, v in self.local.items() if v[1] > now}
        self.local[hashlib.sha256(sid.encode()).hexdigest()] = record
        if st.backend is not None:
            value = orjson.dumps(record)
            await self._redis(st, lambda r: r.set(self._redis_key(st, sid), value, ex=int(SESSION_TTL_S)))
        return sid

    async def valid(self, st: AppState, sid: str, key: str) -> bool:
        """Redis is the authority when configured (a logout on another replica counts at once); this
        process's copy only stands in while Redis is unreachable."""
        record = self.local.get(hashlib.sha256(sid.encode()).hexdigest())
        if st.backend is not None:
            raw = await self._redis(st, lambda r: r.get(self._redis_key(st, sid)))
            if raw is not _UNAVAILABLE:
                record = tuple(orjson.loads(raw)) if raw else None
        if record is None or record[1] <= time.time():
            return False
        return hmac.compare_digest(str(record[2]), self._seal(key, sid))

    async def revoke(self, st: AppState, sid: str) -> None:
        self.local.pop(hashlib.sha256(sid.encode()).hexdigest(), None)
        if st.backend is not None:
            await self._redis(st, lambda r: r.delete(self._redis_key(st, sid)))

    @staticmethod
    async def _redis(st: AppState, fn):  # type: ignore[no-untyped-def]
        assert st.backend is not None
        try:
            return await st.backend.call(fn)
        except Exception as exc:  # noqa: BLE001 - Redis down: this process's records still count
            log.warning("admin session store unavailable", extra={"fields": {"error": type(exc).__name__}})
            return _UNAVAILABLE

    def throttled(self, addr: str, now: float) -> bool:
        start, count = self.failures.get(addr, (now, 0))
        return now - start < FAILURE_WINDOW_S and count >= MAX_FAILURES

    def failed(self, addr: str, now: float) -> None:
        start, count = self.failures.get(addr, (now, 0))
        if now - start >= FAILURE_WINDOW_S:
            start, count = now, 0
        if len(self.failures) >= MAX_TRACKED:
            self.failures.clear()
        self.failures[addr] = (start, count + 1)


SESSIONS: StateKey[AdminSessions] = StateKey("admin.sessions")


def sessions_of(st: AppState) -> AdminSessions:
    return st.components.ensure(SESSIONS, AdminSessions)


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


def throttle(request: web.Request) -> None:
    """429 for an address that sent too many wrong admin keys in the current window."""
    st = request.app[APP_STATE]
    if sessions_of(st).throttled(client_address(request), time.monotonic()):
        st.metrics.decision("admin_auth", "throttled")
        raise LocalReply(429, "Too many wrong admin keys; retry later.", type="rate_limit_error",
                         code="admin_throttled", headers={"retry-after": str(int(FAILURE_WINDOW_S))})


def wrong_key(request: web.Request) -> None:
    st = request.app[APP_STATE]
    st.metrics.decision("admin_auth", "wrong_key")
    sessions_of(st).failed(client_address(request), time.monotonic())


def key_matches(key: str, presented: str) -> bool:
    return bool(key and presented) and hmac.compare_digest(presented.encode(), key.encode())


async def check_admin(request: web.Request) -> None:
    """Raise ``LocalReply`` 404 (admin off), 429 (throttled) or 401 unless the request is an admin's."""
    st = request.app[APP_STATE]
    key = st.config.admin.api_key
    if not key:
        raise LocalReply(404, "Admin API is disabled: set admin.api_key to enable it.", code="admin_disabled")
    throttle(request)
    parts = request.headers.get("authorization", "").split(None, 1)
    presented = parts[1].strip() if len(parts) == 2 and parts[0].lower() == "bearer" else ""
    if presented:
        if key_matches(key, presented):
            return
        wrong_key(request)
    cookie = request.cookies.get(COOKIE, "")
    if cookie and await sessions_of(st).valid(st, cookie, key):
        return
    raise LocalReply(401, "Admin key required.", type="invalid_request_error", code="invalid_api_key")


def same_origin(request: web.Request) -> bool:
    """False for a cross-site browser request (CSRF on login/logout); requests without the headers pass."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:  # set by the browser itself; authoritative when present
        return site in ("same-origin", "none")
    # Without it, compare Origin. A page served with Referrer-Policy: no-referrer makes the browser send
    # "Origin: null" on its own form posts, which is why Sec-Fetch-Site is read first.
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"
