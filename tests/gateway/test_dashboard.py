"""GET /admin/dashboard: login, the ?key= exchange for a cookie, assets, and the key never leaking."""
from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from gateway.admin_auth import COOKIE
from gateway.dashboard import ASSETS, RedactKeyFilter
from gateway.mock import MockServer
from tests.support.servers import InProcessGateway, gateway_config, start_gateway

KEY = "adm-dash-Key-7f3"
PAGE = "/admin/dashboard"


@pytest_asyncio.fixture
async def gw(mock_upstream: MockServer) -> AsyncIterator[InProcessGateway]:
    gateway = await start_gateway(gateway_config(mock_upstream.url, admin={"api_key": KEY},
                                                 server={"access_log": True, "drain_s": 5, "grace_s": 0}))
    try:
        yield gateway
    finally:
        await gateway.close()


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_page_and_assets_need_a_session(gw: InProcessGateway) -> None:
    """Without a session: the page is the 401 login form, scripts are 401, only the stylesheet is public."""
    async with session() as http:
        async with http.get(gw.url + PAGE) as resp:
            assert resp.status == 401
            body = await resp.text()
            assert 'action="/admin/dashboard/login"' in body and "dashboard.js" not in body
        for name, (_rel, _ctype, public) in ASSETS.items():
            async with http.get(f"{gw.url}{PAGE}/assets/{name}") as resp:
                assert resp.status == (200 if public else 401), name
        async with http.get(f"{gw.url}{PAGE}/assets/..%2Fdashboard.py") as resp:
            assert resp.status == 404


async def test_key_in_url_becomes_a_cookie_and_leaves_the_url(gw: InProcessGateway) -> None:
    """``?key=`` answers 303 to the bare page with an HttpOnly SameSite=Strict session cookie,
    never the key."""
    async with session() as http:
        async with http.get(f"{gw.url}{PAGE}?key={KEY}", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["location"] == PAGE
            cookie = resp.headers["set-cookie"]
            assert f"{COOKIE}=" in cookie and KEY not in cookie
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
            assert resp.headers["referrer-policy"] == "no-referrer"
        async with http.get(gw.url + PAGE) as resp:
            assert resp.status == 200
            assert 'src="/admin/dashboard/assets/dashboard.js"' in await resp.text()
            assert "script-src 'self'" in resp.headers["content-security-policy"]


async def test_wrong_key_in_url_is_dropped_too(gw: InProcessGateway) -> None:
    """A wrong ``?key=`` also leaves the URL, sets no cookie, and lands on the 401 form with an error."""
    async with session() as http:
        async with http.get(f"{gw.url}{PAGE}?key=wrong", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["location"] == PAGE + "?error=1"
            assert "set-cookie" not in resp.headers
        async with http.get(f"{gw.url}{PAGE}?key=wrong") as resp:
            assert resp.status == 401 and "not accepted" in await resp.text()


async def test_login_form_and_logout(gw: InProcessGateway) -> None:
    """POSTing the key signs in (cookie), a wrong key is a 401 form, signing out ends the session."""
    async with session() as http:
        async with http.post(gw.url + PAGE + "/login", data={"key": "nope"}) as resp:
            assert resp.status == 401 and "not accepted" in await resp.text()
        async with http.post(gw.url + PAGE + "/login", data={"key": KEY}) as resp:
            assert resp.status == 200 and str(resp.url).endswith(PAGE)
        async with http.get(gw.url + "/admin/stats") as resp:
            assert resp.status == 200  # the same cookie opens the feed
        async with http.post(gw.url + PAGE + "/logout") as resp:
            assert resp.status == 401
        async with http.get(gw.url + "/admin/stats/stream") as resp:
            assert resp.status == 401


async def test_key_never_in_served_files_or_logs(
    gw: InProcessGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Page, scripts and styles never contain the key; the access log of ``?key=`` has it redacted."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    async with session() as http:
        async with http.get(f"{gw.url}{PAGE}?key={KEY}") as resp:
            served = [await resp.text()]
        for name in ASSETS:
            async with http.get(f"{gw.url}{PAGE}/assets/{name}") as resp:
                assert resp.status == 200
                served.append(await resp.text())
    assert all(KEY not in text for text in served)
    access = [r for r in caplog.records if r.name == "aiohttp.access"]
    assert access, "access log enabled in this config"
    for record in caplog.records:
        assert KEY not in record.getMessage() and KEY not in str(record.__dict__)


def test_page_has_no_inline_code() -> None:
    """The CSP forbids inline scripts and styles, so the page must not rely on them."""
    from gateway.dashboard import DashboardFiles

    files = DashboardFiles.load()
    for page in (files.index.decode(), files.login.decode()):
        assert not re.search(r"<script(?![^>]*\bsrc=)", page)
        assert "<style" not in page and " style=" not in page
        assert not re.search(r"\son\w+=", page)


def test_redact_filter() -> None:
    """``key=`` values in an access line and its request-line field are blanked."""
    record = logging.LogRecord(
        "aiohttp.access", logging.INFO, "", 0, f'"GET /admin/dashboard?key={KEY}&x=1 HTTP/1.1"', None, None
    )
    record.first_request_line = f"GET /admin/dashboard?key={KEY} HTTP/1.1"
    RedactKeyFilter().filter(record)
    assert KEY not in record.getMessage() and "key=[redacted]&x=1" in record.getMessage()
    assert KEY not in record.first_request_line


async def test_dashboard_off_without_admin_key(mock_upstream: MockServer) -> None:
    """Without ``admin.api_key`` the page, login and assets are 404."""
    gw = await start_gateway(gateway_config(mock_upstream.url))
    try:
        async with session() as http:
            for method, path in (
                ("GET", PAGE),
                ("POST", PAGE + "/login"),
                ("GET", PAGE + "/assets/dashboard.css"),
            ):
                async with http.request(method, gw.url + path, allow_redirects=False) as resp:
                    assert resp.status == 404
    finally:
        await gw.close()
