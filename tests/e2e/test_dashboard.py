"""The live dashboard in a real headless Chromium, in front of real traffic through the gateway.

Chromium is Debian's package (``apt-get install chromium``) driven by the Python
``playwright`` package pointed at that executable: no browser download. The test
skips only when that executable is missing.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from gateway.components import BREAKER_STATES
from gateway.mock import MockServer
from policies.ratelimit.runtime import COMPONENT as RATE_LIMIT
from tests.e2e.conftest import GatewayFactory
from tests.support.servers import InProcessGateway
from tests.support.until import until

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "dashboard.png"  # rewritten only with GATEWAY_UPDATE_SCREENSHOT=1
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ADMIN_KEY = "adm-e2e-Zq9-never-in-pages"
STREAMS, CACHED_CALLS, STORM = 6, 3, 6

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="chromium is not installed: apt-get install chromium (see .ci/run)")


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, driven by playwright; closed on the way out."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def dashboard_gateway(make_gateway: GatewayFactory, mock_upstream: MockServer) -> InProcessGateway:
    upstream = {"base_url": mock_upstream.url, "api_key": "sk-upstream-secret",
                "retry": {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02, "jitter": "none"},
                "circuit_breaker": {"consecutive_failures": 3, "open_s": 120, "max_open_s": 300},
                "rate_limit": {"max_concurrency": 1}}  # the second stream of each pair queues
    auth = {"mode": "keys",
            "keys": [{"key": "sk-alpha", "tenant": "alpha"}, {"key": "sk-beta", "tenant": "beta"}]}
    return await make_gateway(admin={"api_key": ADMIN_KEY}, upstreams={"mock": upstream}, auth=auth,
                              metrics={"models": ["gpt-4o", "gpt-4o-mini"]},
                              pricing={"gpt-4o": {"input": 2.5, "output": 10.0},
                                       "gpt-4o-mini": {"input": 0.15, "output": 0.6}})


async def drive_traffic(gw: InProcessGateway) -> int:
    """Paced streams (80 ms TTFT), a cache miss then hits, a 503 storm, from two tenants; returns failures."""
    messages = [{"role": "user", "content": "Tell me about the weather."}]
    failures = 0
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-alpha", max_retries=0) as alpha, \
            AsyncOpenAI(base_url=gw.base_url, api_key="sk-beta", max_retries=0) as beta:

        async def stream_one() -> None:
            stream = await alpha.chat.completions.create(
                model="gpt-4o", messages=messages, stream=True,
                extra_headers={"x-mock-fault": "ttft_ms=80;tokens_per_s=40"})
            async for _chunk in stream:
                pass

        for _ in range(STREAMS // 2):
            await asyncio.gather(stream_one(), stream_one())
        for _ in range(CACHED_CALLS):
            await beta.chat.completions.create(model="gpt-4o-mini", messages=messages, temperature=0)
        for _ in range(STORM):
            try:
                await alpha.chat.completions.create(model="gpt-4o", messages=messages,
                                                    extra_headers={"x-mock-fault": "status=503"})
            except openai.APIStatusError:
                failures += 1
    return failures


async def admin_stats(gw: InProcessGateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(
            gw.url + "/admin/stats", headers={"authorization": f"Bearer {ADMIN_KEY}"}) as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


async def page_until(page: Any, expression: str, within: float, arg: Any = None) -> None:
    """Poll a JavaScript predicate from here; each look is one ``page.evaluate`` (a DevTools call).

    Not ``page.wait_for_function``: it re-runs the predicate from the page's own timers through
    ``eval``, which the dashboard's CSP (``script-src 'self'``) blocks, so it fails whenever the
    predicate is not already true at its first look (a slow machine).
    """
    async def holds() -> bool:
        return bool(await page.evaluate(expression, arg))
    await until(holds, timeout=within, interval=0.05, message=expression)


async def stat(page: Any, name: str) -> str:
    return (await page.locator(f'[data-stat="{name}"]').first.inner_text()).strip()


async def test_dashboard_shows_live_traffic_in_chromium(make_gateway: GatewayFactory,
                                                        mock_upstream: MockServer) -> None:
    """Real traffic, then the page in Chromium: tiles, tables and the breaker show the expected figures."""
    from playwright.async_api import async_playwright

    gw = await dashboard_gateway(make_gateway, mock_upstream)
    assert await drive_traffic(gw) == STORM
    total = STREAMS + CACHED_CALLS + STORM
    expected = await admin_stats(gw)
    assert expected["requests"]["total"] == total
    breakers_on = gw.state.components.get(BREAKER_STATES) is not None

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            resp = await page.goto(f"{gw.url}/admin/dashboard?key={ADMIN_KEY}")
            assert resp is not None and resp.status == 200
            assert page.url == f"{gw.url}/admin/dashboard", "the key must be dropped from the URL"
            await page_until(
                page, "n => document.querySelector('[data-stat=\"requests-total\"]')?.textContent === n",
                15, arg=str(total))
            await page_until(
                page, f"document.querySelectorAll('#recent tbody tr[data-status]').length === {total}", 10)

            assert await stat(page, "success-rate") == f"{100 * (total - STORM) / total:.1f}%"
            assert await stat(page, "cache-hit-rate") == f"{100 * (CACHED_CALLS - 1) / CACHED_CALLS:.1f}%"
            assert await stat(page, "cache-hits") == str(CACHED_CALLS - 1)
            ttft = await page.locator('#models tr[data-model="gpt-4o"] td').nth(3).inner_text()
            assert re.fullmatch(r"\d+ ms",
                                ttft) and 70 <= int(ttft.split()[0]) <= 400, ttft  # queued ones: >450 ms
            assert await page.locator('#models tr[data-model="gpt-4o-mini"]').count() == 1
            itl = await page.locator('#models tr[data-model="gpt-4o"] td').nth(5).inner_text()
            assert re.fullmatch(r"\d+ ms", itl) and 15 <= int(itl.split()[0]) <= 100, itl
            alpha = page.locator('#tenants tr[data-tenant="alpha"] td')
            assert await alpha.nth(1).inner_text() == str(STREAMS + STORM)
            assert await alpha.nth(2).inner_text() == str(STORM)
            assert await page.locator('#tenants tr[data-tenant="beta"] td').nth(1).inner_text() == str(
                CACHED_CALLS
            )
            assert (
                await stat(page, "tokens-total")
                == f"{expected['tokens']['prompt'] + expected['tokens']['completion']:,}"
            )
            assert (await stat(page, "cost")).startswith("$") and expected["cost_usd"] > 0
            assert await stat(page, "retried") == str(expected["resilience"]["retried_requests"])
            assert await stat(page, "scope") == "worker"  # one process, no shared backend: says so
            assert not await page.locator("#scope-banner").is_visible()  # ...and that is not a fallback
            assert await page.locator("#recent tbody tr[data-status='503'], "
                                      "#recent tbody tr[data-status='502']").count() == STORM
            if gw.state.components.get(RATE_LIMIT) is not None:
                # retry backoff is a deliberate wait too
                backoffs = expected["resilience"]["retried_requests"]
                assert await stat(page, "waited") == str(STREAMS // 2 + backoffs)
                assert await page.locator('#queues dd[data-queue="mock"]').inner_text() == "0"
            if breakers_on:
                row = page.locator('#breakers tr[data-upstream="mock"]')
                await row.wait_for(timeout=5000)
                assert await row.get_attribute("data-state") == "open"
                assert (await row.locator(".badge").inner_text()).strip() == "open"
            else:
                assert await page.locator('[data-stat="breakers-na"]').is_visible()

            await page_until(page, "document.querySelectorAll('.chart canvas').length >= 4", 10)
            html = await page.content()
            assert ADMIN_KEY not in html
            assert not errors, errors
            shot = await page.screenshot(full_page=True)
            assert shot.startswith(b"\x89PNG")  # the page renders to an image
            if os.environ.get("GATEWAY_UPDATE_SCREENSHOT") == "1":
                SCREENSHOT.write_bytes(shot)

            await check_keyboard(page)
            await check_phone_and_dark(browser, page)
        finally:
            await browser.close()


async def check_keyboard(page: Any) -> None:
    """The first Tab reaches the skip link; Pause is a real button that toggles from the keyboard."""
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip"
    await page.focus("#pause")
    await page.keyboard.press("Enter")
    assert await page.get_attribute("#pause", "aria-pressed") == "true"
    await page.keyboard.press("Space")
    assert await page.get_attribute("#pause", "aria-pressed") == "false"


async def check_phone_and_dark(browser: Any, page: Any) -> None:
    """A phone-sized viewport has no page-wide horizontal scroll; dark mode changes the colours."""
    cookies = await page.context.cookies()
    phone = await browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark",
                                      device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        await phone.add_cookies(cookies)
        p = await phone.new_page()
        await p.goto(page.url)
        await page_until(p, "document.querySelectorAll('.chart canvas').length >= 4", 10)
        assert await p.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        dark_bg = await p.evaluate("getComputedStyle(document.body).backgroundColor")
        light_bg = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert dark_bg != light_bg
    finally:
        await phone.close()


async def test_login_form_sets_cookie_without_key_in_page(make_gateway: GatewayFactory,
                                                         mock_upstream: MockServer) -> None:
    """Without a session the page is the 401 login form; signing in through it shows the dashboard."""
    gw = await dashboard_gateway(make_gateway, mock_upstream)
    async with chromium() as browser:
        page = await browser.new_page()
        resp = await page.goto(f"{gw.url}/admin/dashboard")
        assert resp is not None and resp.status == 401
        await page.fill("#key", "wrong-key")
        await page.click("button[type=submit]")
        assert await page.locator(".login-error").is_visible()
        await page.fill("#key", ADMIN_KEY)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#conn[data-state=live]", timeout=10000)
        assert page.url == f"{gw.url}/admin/dashboard"
        cookie = next(c for c in await page.context.cookies() if c["name"] == "gw_admin")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and ADMIN_KEY not in cookie["value"]
        assert ADMIN_KEY not in await page.content()
        await asyncio.wait_for(page.click("text=Sign out"), 10)
        await page.wait_for_selector("#key", timeout=10000)


async def test_page_until_polls_under_the_dashboards_csp(make_gateway: GatewayFactory,
                                                         mock_upstream: MockServer) -> None:
    """A predicate that becomes true only later is still seen under the page's CSP (no eval in the page)."""
    gw = await dashboard_gateway(make_gateway, mock_upstream)
    async with chromium() as browser:
        page = await browser.new_page()
        resp = await page.goto(f"{gw.url}/admin/dashboard?key={ADMIN_KEY}")
        assert resp is not None and "script-src 'self'" in resp.headers["content-security-policy"]
        assert not await page.evaluate("document.body.dataset.late === '1'")

        async def later() -> None:
            await asyncio.sleep(0.3)
            await page.evaluate("document.body.dataset.late = '1'")
        task = asyncio.create_task(later())
        await page_until(page, "document.body.dataset.late === '1'", 5)
        await task
        with pytest.raises(AssertionError, match="never"):
            await page_until(page, "document.body.dataset.never === '1'", 0.2)
