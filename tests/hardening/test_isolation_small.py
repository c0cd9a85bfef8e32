"""Issue 16, the smaller findings, each against the real server with a positive control.

Duplicate keys after JSON unescaping; dot segments in every spelling; 502s that name the upstream but
not its address; ``server.access_log: true``; ``/v1/models`` behind the key in keys mode, remembered
per credential and refreshed by one fetch at a time.
"""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.mock import MockServer
from tests.hardening.scripted import Scripted
from tests.support.servers import free_port, gateway_config, spawn_gateway, wait_ready

CHAT = [{"role": "user", "content": "hi"}]


async def post_raw(url: str, raw: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", data=raw,
                          headers={"content-type": "application/json", **(headers or {})}) as resp:
            return resp.status, orjson.loads(await resp.read())


@pytest.mark.parametrize("raw", [
    rb'{"model":"gpt-4o","mod\u0065l":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
    rb'{"\u006d\u006f\u0064\u0065\u006c":"gpt-4o-mini","model":"gpt-4o","messages":[{"role":"user","content":"x"}]}',
    rb'{"model":"gpt-4o","stream":false,"stre\u0061m":true,"messages":[{"role":"user","content":"hi"}]}',
])
async def test_duplicate_steering_key_spelled_with_escapes_is_refused(
    make_gateway: Any, mock_upstream: MockServer, raw: bytes
) -> None:
    gw = await make_gateway()
    status, body = await post_raw(gw.url, raw)
    assert status == 400 and body["error"]["code"] == "duplicate_key"
    assert mock_upstream.recorder.count("/v1/chat/completions") == 0
    # Positive control: one escaped key alone is a valid request.
    ok = rb'{"mod\u0065l":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'
    assert (await post_raw(gw.url, ok))[0] == 200


DOT_PATHS = [
    "/..;/..;/admin",
    "/%2e%2e;x/admin",
    "/\uff0e\uff0e/admin",
    "/%EF%BC%8E%EF%BC%8E/admin",
    "/%252e%252e/admin",
    "/\u2025/admin",
    "/x%EF%BC%8Fy",
    "/%25252e%25252e/admin",
]


@pytest.mark.parametrize("path", DOT_PATHS)
async def test_dot_segments_in_every_spelling_are_refused(
    make_gateway: Any, mock_upstream: MockServer, path: str
) -> None:
    gw = await make_gateway(passthrough=True, tools={"search": {"base_url": mock_upstream.base_url + "/v0"}})
    async with aiohttp.ClientSession() as s:
        for prefix in ("/tools/search", "/v1/files"):
            async with s.get(gw.url + prefix + path) as resp:
                body = orjson.loads(await resp.read())
                assert resp.status == 400 and body["error"]["code"] == "invalid_tool_path", prefix
        assert len(mock_upstream.recorder.attempts) == 0
        for prefix in ("/tools/search", "/v1/files"):  # positive control: a plain path is forwarded
            async with s.get(gw.url + prefix + "/file-abc..x") as resp:
                assert resp.status == 200
        assert len(mock_upstream.recorder.attempts) == 2


async def test_502_names_the_upstream_never_its_address(make_gateway: Any) -> None:
    port = free_port()  # nothing listens there
    gw = await make_gateway(
        upstreams={"provider-a": {"base_url": f"http://127.0.0.1:{port}/v1", "api_key": "sk"}},
        routes=[{"match": {"model": "*"}, "upstream": "provider-a"}],
    )
    status, body = await post_raw(gw.url, orjson.dumps({"model": "gpt-4o", "messages": CHAT}))
    message = body["error"]["message"]
    assert status == 502 and "provider-a" in message
    assert "127.0.0.1" not in message and str(port) not in message


async def test_access_log_setting_logs_request_lines(mock_upstream: MockServer) -> None:
    """The real ``gateway serve``: access lines appear, and credential query values are redacted."""
    gw = spawn_gateway(gateway_config(mock_upstream.url, server={"access_log": True, "workers": 1}))
    try:
        await wait_ready(gw.url)
        async with aiohttp.ClientSession() as s:
            async with s.get(gw.url + "/healthz?api_key=sk-in-the-query&x=1") as resp:
                assert resp.status == 200
        for _ in range(100):
            if "/healthz" in gw.logs():
                break
            await asyncio.sleep(0.05)
    finally:
        gw.stop()
    logs = gw.logs()
    assert "GET /healthz?api_key=[redacted]&x=1" in logs
    assert "sk-in-the-query" not in logs


KEYS = {"mode": "keys", "keys": [{"key": "sk-gw-a", "tenant": "a"}]}


async def test_models_list_needs_a_key_in_keys_mode(make_gateway: Any) -> None:
    gw = await make_gateway(auth=KEYS)
    async with aiohttp.ClientSession() as s:
        for path in ("/v1/models", "/v1/models/gpt-4o"):
            async with s.get(gw.url + path) as resp:
                assert (
                    resp.status == 401
                    and orjson.loads(await resp.read())["error"]["code"] == "missing_api_key"
                )
            async with s.get(gw.url + path, headers={"Authorization": "Bearer sk-gw-a"}) as resp:
                assert resp.status == 200  # positive control


async def list_ids(url: str, headers: dict[str, str]) -> set[str]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/v1/models", headers=headers) as resp:
            assert resp.status == 200
            return {m["id"] for m in orjson.loads(await resp.read())["data"]}


async def test_model_list_is_never_served_across_credentials(make_gateway: Any, scripted: Scripted) -> None:
    """Passthrough, no upstream key: X's private fine-tune list stays X's, and one fetch serves 50 callers."""
    gw = await make_gateway(upstreams={"mock": {"base_url": scripted.url}})
    scripted.default = (200, {"object": "list", "data": []}, {})
    scripted.script.append(
        (200, {"object": "list", "data": [{"id": "ft:gpt-4o:x-private", "object": "model"}]}, {})
    )
    assert "ft:gpt-4o:x-private" in await list_ids(gw.url, {"Authorization": "Bearer sk-x"})
    assert "ft:gpt-4o:x-private" not in await list_ids(gw.url, {"Authorization": "Bearer sk-y"})
    assert "ft:gpt-4o:x-private" not in await list_ids(gw.url, {})
    assert "ft:gpt-4o:x-private" in await list_ids(gw.url, {"Authorization": "Bearer sk-x"})  # X's own memo
    assert len(scripted.seen) == 3
    scripted.delay_s = 0.2
    await asyncio.gather(*(list_ids(gw.url, {"x-api-key": "sk-z"}) for _ in range(50)))
    assert len(scripted.seen) == 4  # single flight: one provider call for 50 concurrent listings
