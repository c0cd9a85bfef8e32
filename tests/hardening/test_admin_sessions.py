"""Issue 16, admin sessions: random server-side sessions, revoked by logout and key rotation, CSRF-checked
login/logout, wrong keys throttled per address, sessions shared through Redis. Each attack has its control."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from gateway.admin_auth import COOKIE, MAX_FAILURES
from gateway.config import parse_config
from gateway.mock import MockServer
from gateway.reload import Reloader
from tests.support.servers import RedisServer, gateway_config, start_gateway

KEY = "admin-key-0123456789"
PAGE = "/admin/dashboard"


async def login(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + PAGE + "/login", data={"key": KEY}, headers=headers or {},
                          allow_redirects=False) as resp:
            return resp.status, resp.cookies[COOKIE].value if COOKIE in resp.cookies else ""


async def stats(url: str, sid: str = "", bearer: str = "") -> int:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/admin/stats", headers={"Cookie": f"{COOKIE}={sid}"} if sid else (
                {"Authorization": f"Bearer {bearer}"} if bearer else {})) as resp:
            return resp.status


async def test_sessions_are_random_and_revoked_by_logout(make_gateway: Any) -> None:
    gw = await make_gateway(admin={"api_key": KEY})
    (s1, c1), (s2, c2) = await login(gw.url), await login(gw.url)
    assert s1 == s2 == 303 and c1 and c2 and c1 != c2 and KEY not in c1
    assert await stats(gw.url, c1) == 200 and await stats(gw.url, c2) == 200
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + PAGE + "/logout", headers={"Cookie": f"{COOKIE}={c1}",
                                                               "Origin": "https://evil.example"},
                          allow_redirects=False) as resp:
            assert resp.status == 403  # cross-site logout refused: the session survives
        assert await stats(gw.url, c1) == 200
        async with s.post(gw.url + PAGE + "/logout", headers={"Cookie": f"{COOKIE}={c1}"},
                          allow_redirects=False) as resp:
            assert resp.status == 303
    assert await stats(gw.url, c1) == 401  # revoked server-side, even if the cookie was copied
    assert await stats(gw.url, c2) == 200  # other sessions live on
    assert await stats(gw.url, "forged-" + c2) == 401


async def test_cross_site_login_is_refused(make_gateway: Any) -> None:
    gw = await make_gateway(admin={"api_key": KEY})
    assert (await login(gw.url, {"Sec-Fetch-Site": "cross-site"}))[0] == 403
    assert (await login(gw.url, {"Origin": "https://evil.example"}))[0] == 403
    assert (await login(gw.url, {"Origin": gw.url, "Sec-Fetch-Site": "same-origin"}))[0] == 303


async def test_key_rotation_revokes_sessions_and_ends_open_streams(mock_upstream: MockServer,
                                                                   tmp_path: Path) -> None:
    cfg = gateway_config(mock_upstream.url, admin={"api_key": KEY})
    gw = await start_gateway(cfg)
    try:
        _, sid = await login(gw.url)
        async with aiohttp.ClientSession() as s:
            async with s.get(
                gw.url + "/admin/stats/stream", headers={"Authorization": f"Bearer {KEY}"}
            ) as resp:
                assert resp.status == 200
                await resp.content.readline()  # the stream is open
                await Reloader(state=gw.state, path=tmp_path / "x.yaml").apply(
                    parse_config({**cfg, "admin": {"api_key": KEY + "-rotated"}})
                )
                await asyncio.wait_for(resp.read(), 5)  # the open stream ends
        assert await stats(gw.url, sid) == 401
        assert await stats(gw.url, bearer=KEY + "-rotated") == 200
    finally:
        await gw.close()


async def test_wrong_admin_keys_are_throttled_per_address(make_gateway: Any) -> None:
    gw = await make_gateway(admin={"api_key": KEY})
    assert await stats(gw.url, bearer=KEY) == 200  # control
    for _ in range(MAX_FAILURES):
        assert await stats(gw.url, bearer="guess") == 401
    assert await stats(gw.url, bearer="guess") == 429
    assert await stats(gw.url, bearer=KEY) == 429  # no more guesses from this address for the window
    assert (
        gw.state.metrics.registry.get_sample_value(
            "gateway_policy_decisions_total", {"policy": "admin_auth", "decision": "throttled"}
        )
        >= 2
    )


async def test_sessions_are_shared_through_redis(
    mock_upstream: MockServer, redis_server: RedisServer
) -> None:
    state = {"backend": "redis", "redis_url": redis_server.url, "key_prefix": "adm:", "timeout_ms": 5000}
    one = await start_gateway(gateway_config(mock_upstream.url, admin={"api_key": KEY}, state=state))
    two = await start_gateway(gateway_config(mock_upstream.url, admin={"api_key": KEY}, state=state))
    try:
        _, sid = await login(one.url)
        assert await stats(two.url, sid) == 200  # another replica knows the session
        async with aiohttp.ClientSession() as s:
            async with s.post(
                two.url + PAGE + "/logout", headers={"Cookie": f"{COOKIE}={sid}"}, allow_redirects=False
            ) as resp:
                assert resp.status == 303
        assert await stats(one.url, sid) == 401  # revoked on the replica that issued it too
    finally:
        await one.close()
        await two.close()
