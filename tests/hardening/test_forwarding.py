"""Forwarding: the client cannot pick the host, make us follow a redirect, or steer retries or timeouts.

A listening "canary" socket stands for a host the attacker wants reached (cloud metadata, an internal
service); every trick below names it, and it must never see a connection. What the provider sees is
checked on the fake provider's record.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest_asyncio
from yarl import URL

from gateway.mock import MockServer
from tests.hardening.rawhttp import request, send_raw
from tests.support.servers import InProcessGateway

CHAT = [{"role": "user", "content": "hi"}]
FAST_RETRY = {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02}


class Canary:
    """A listener that counts connections: a host no request may ever reach."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    @property
    def hostport(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest_asyncio.fixture
async def canary() -> AsyncIterator[Canary]:
    c = Canary()
    c.server = await asyncio.start_server(c._accept, "127.0.0.1", 0)
    try:
        yield c
    finally:
        c.server.close()


async def forwarding_gateway(make_gateway: Any, mock: MockServer) -> InProcessGateway:
    return await make_gateway(
        passthrough=True, upstreams={"mock": {"base_url": mock.url, "api_key": "sk-up", "retry": FAST_RETRY}},
        tools={"search": {"base_url": mock.base_url + "/v0", "read_only": True, "retry": FAST_RETRY}})


def attacks(evil: str) -> list[tuple[str, str, dict[str, str], bytes | None]]:
    """(method, raw path, headers, body): each tries to send the call to ``evil``."""
    body = {"model": "gpt-4o", "messages": CHAT}
    out: list[tuple[str, str, dict[str, str], bytes | None]] = [
        ("POST", "/v1/chat/completions", {}, orjson.dumps({**body, field: f"http://{evil}/v1"}))
        for field in ("api_base", "base_url", "azure_endpoint", "api_version")]
    out += [("POST", "/v1/chat/completions", {name: value}, orjson.dumps(body)) for name, value in (
        ("Host", evil), ("X-Forwarded-Host", evil), ("Forwarded", f"host={evil}"), ("X-Original-URL", f"http://{evil}/"),
        ("X-Rewrite-URL", f"http://{evil}/"), ("X-Gateway-Upstream", f"http://{evil}"),
        ("X-Gateway-Base-Url", f"http://{evil}"), ("X-Forwarded-Proto", "gopher"))]
    out += [("POST", "/v1/chat/completions", {}, orjson.dumps({**body, "model": m}))
            for m in (f"http://{evil}/gpt-4o", f"//{evil}/gpt-4o", f"{evil}")]
    out += [
        (
            "POST",
            f"/v1/chat/completions?api_base=http://{evil}&base_url=http://{evil}",
            {},
            orjson.dumps(body),
        )
    ]
    tool_paths = [
        f"/tools/search//{evil}/x",
        f"/tools/search/@{evil}/x",
        f"/tools/search/http:%2F%2F{evil}/x",
        f"/tools/search/%2F%2F{evil}/x",
        f"/tools/search/..%2F..%2F{evil}",
        "/tools/search/%2e%2e/%2e%2e/x",
        f"/tools/search/x%5C..%5C{evil}",
        "/tools/search/.%2e/x",
        f"/tools/search/x?url=http://{evil}/",
        "/tools/search/%252e%252e/x",
    ]
    out += [("GET", p, {}, None) for p in tool_paths]
    out += [
        ("GET", p, {}, None)
        for p in (
            f"/v1//{evil}/files",
            f"/v1/%2F%2F{evil}/files",
            f"/v1/..%2F..%2F{evil}",
            f"/v1/@{evil}/files",
            "/v1/files/%2e%2e/%2e%2e/admin",
        )
    ]
    return out


async def test_no_trick_reaches_a_host_the_client_names(make_gateway: Any, mock_upstream: MockServer,
                                                        canary: Canary) -> None:
    """Body fields, Host and forwarding headers, model names, query strings, tool and passthrough paths with
    ``//host``, ``@host``, ``..`` and encoded slashes, absolute-form targets: the canary host sees nothing,
    and every call that went out went to a configured base path."""
    gw = await forwarding_gateway(make_gateway, mock_upstream)
    evil = canary.hostport
    statuses = []
    async with aiohttp.ClientSession() as session:
        for method, path, headers, body in attacks(evil):
            async with session.request(method, URL(gw.url + path, encoded=True), data=body,
                                       headers={"Content-Type": "application/json", **headers}) as resp:
                await resp.read()
                statuses.append(resp.status)
                assert resp.status < 500, (path, headers, resp.status)
    for target in (
        f"http://{evil}/v1/chat/completions",
        f"http://{evil}/tools/search/x",
        f"//{evil}/v1/files",
    ):
        resp = await send_raw(gw.port, request(target, orjson.dumps({"model": "gpt-4o", "messages": CHAT}),
                                               headers={"Connection": "close"}))
        statuses.append(resp.status)
        assert resp.status < 500, (target, resp.status)
    assert canary.connections == 0
    # both served and refused tricks
    assert statuses.count(200) >= 8 and any(400 <= s < 500 for s in statuses)
    for attempt in mock_upstream.recorder.attempts:  # an empty segment under the base path is still our host
        assert attempt.path.startswith(("/v1/", "/v0/")) and not {".", ".."} & set(attempt.path.split("/"))
        assert attempt.headers.get("host", "") == URL(mock_upstream.url).raw_authority


async def test_redirects_are_never_followed(
    make_gateway: Any, mock_upstream: MockServer, canary: Canary
) -> None:
    """301/302/303/307/308 from the provider (chat, stream, tool) pointing at another host: 502,
    canary untouched."""
    gw = await forwarding_gateway(make_gateway, mock_upstream)
    location = f"http://{canary.hostport}/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        for code in (301, 302, 303, 307, 308):
            for stream in (False, True):
                fault = {"x-mock-fault": f"redirect={code};location={location}"}
                async with session.post(
                    gw.base_url + "/chat/completions",
                    headers=fault,
                    allow_redirects=False,
                    json={"model": "gpt-4o", "messages": CHAT, "stream": stream},
                ) as resp:
                    assert resp.status == 502 and (await resp.json())["error"]["code"] == "upstream_redirect"
            async with session.get(gw.url + "/tools/search/x", headers=fault, allow_redirects=False) as resp:
                assert resp.status == 502, await resp.text()
    assert canary.connections == 0


async def test_hop_by_hop_and_steering_headers_are_dropped_and_ignored(make_gateway: Any,
                                                                       mock_upstream: MockServer) -> None:
    """Hop-by-hop headers and x-gateway-* steering attempts never reach the provider, and timeouts and retries
    follow the config, whatever x-gateway-* or x-stainless-* headers the client sends."""
    gw = await forwarding_gateway(make_gateway, mock_upstream)
    steering = {"x-gateway-timeout": "0.001", "x-gateway-max-attempts": "1", "x-gateway-retries": "0",
                "x-gateway-retry": "off", "x-gateway-upstream": "other", "x-stainless-timeout": "0.001",
                "x-stainless-retry-count": "9", "x-gateway-deadline-ms": "1"}
    hop = {
        "Connection": "keep-alive, X-Hop-Named",
        "X-Hop-Named": "1",
        "Keep-Alive": "timeout=1",
        "TE": "trailers",
        "Trailer": "X-T",
        "Upgrade": "h2c",
        "Proxy-Authorization": "Basic eA==",
        "Proxy-Connection": "keep-alive",
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(
            mock_upstream.base_url + "/_mock/faults", json={"fault": "status=503", "times": 1}
        ):
            pass
        async with session.post(
            gw.base_url + "/chat/completions",
            json={"model": "gpt-4o", "messages": CHAT},
            headers={**steering, **hop, "x-mock-fault": "stall_before_first_byte_ms=200"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["x-gateway-attempts"] == "2"  # the configured retry, not the client's "0"
    sent = [a for a in mock_upstream.recorder.attempts if a.path == "/v1/chat/completions"]
    assert len(sent) == 2
    for attempt in sent:
        names = {name.lower() for name in attempt.headers}
        assert not names & {h.lower() for h in hop if h != "Connection"} - {"connection"}
        assert not {n for n in names if n.startswith("x-gateway-")}
        assert attempt.headers.get("authorization") == "Bearer sk-up"
