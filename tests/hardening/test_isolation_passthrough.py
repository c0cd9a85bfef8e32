"""Issue 16, finding 5: passthrough in keys mode keeps tenants off each other's stored objects.

Stateful endpoints (files, batches, stored responses, vector stores, fine-tuning, assistants,
threads...) answer 403 unless the tenant's key is granted the family; granted tenants reach only the
objects they created through the gateway (404 otherwise, listings filtered); ``previous_response_id``
must name the tenant's own response. Positive controls: a tenant's own objects and stateless passthrough.
"""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from gateway.config import ConfigError, parse_config
from gateway.mock import MockServer
from tests.hardening.scripted import Scripted
from tests.support.servers import gateway_config

AUTH = {"mode": "keys", "keys": [{"key": "sk-gw-a", "tenant": "a"},
                                 {"key": "sk-gw-b", "tenant": "b", "passthrough": ["files", "responses"]},
                                 {"key": "sk-gw-c", "tenant": "c", "passthrough": ["files", "responses"]}]}
A = {"Authorization": "Bearer sk-gw-a"}
B = {"Authorization": "Bearer sk-gw-b"}
C = {"Authorization": "Bearer sk-gw-c"}
ATTACKS = [
    ("GET", "/v1/files"),
    ("GET", "/v1/files/file-1/content"),
    ("DELETE", "/v1/files/file-1"),
    ("GET", "/v1/batches"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/responses/resp_of_b"),
    ("DELETE", "/v1/responses/resp_of_b"),
    ("GET", "/v1/vector_stores"),
    ("GET", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/assistants"),
    ("POST", "/v1/threads"),
]


async def call(
    url: str, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.request(
            method,
            url + path,
            headers={"content-type": "application/json", **headers},
            data=orjson.dumps(body) if body is not None else None,
        ) as resp:
            raw = await resp.read()
            return resp.status, orjson.loads(raw) if raw.startswith(b"{") else raw


async def test_ungranted_tenant_never_reaches_stateful_endpoints(
    make_gateway: Any, mock_upstream: MockServer
) -> None:
    gw = await make_gateway(passthrough=True, auth=AUTH)
    for method, path in ATTACKS:
        status, body = await call(gw.url, method, path, A, {} if method == "POST" else None)
        assert status == 403 and body["error"]["code"] == "endpoint_not_granted", (method, path)
    assert len(mock_upstream.recorder.attempts) == 0
    assert (await call(gw.url, "GET", "/v1/files", B))[0] == 200  # granted: positive control
    assert (await call(gw.url, "POST", "/v1/moderations", A, {"input": "x"}))[0] == 200  # stateless
    assert len(mock_upstream.recorder.attempts) == 2


async def test_previous_response_id_of_another_tenant_is_404(make_gateway: Any) -> None:
    gw = await make_gateway(passthrough=True, auth=AUTH)
    status, created = await call(gw.url, "POST", "/v1/responses", B, {"model": "gpt-4o", "input": "hi"})
    assert status == 200 and created["id"].startswith("resp_")
    ask = {"model": "gpt-4o", "input": "more", "previous_response_id": created["id"]}
    status, body = await call(gw.url, "POST", "/v1/responses", A, ask)
    assert status == 404 and body["error"]["param"] == "previous_response_id"
    assert (await call(gw.url, "POST", "/v1/responses", B, ask))[0] == 200  # its own: positive control
    status, body = await call(
        gw.url, "GET", f"/v1/responses/{created['id']}", {"Authorization": "Bearer sk-gw-c"}
    )
    assert status == 404  # granted, but another tenant's stored response


async def test_granted_tenants_see_only_their_own_objects(make_gateway: Any, scripted: Scripted) -> None:
    """Two tenants granted ``files``: each upload is tagged; reads, deletes and listings stay per tenant."""
    gw = await make_gateway(
        passthrough=True, auth=AUTH, upstreams={"mock": {"base_url": scripted.url, "api_key": "sk-up"}}
    )
    scripted.script += [
        (200, {"id": "file-of-b", "object": "file"}, {}),
        (200, {"id": "file-of-c", "object": "file"}, {}),
    ]
    assert (await call(gw.url, "POST", "/v1/files", B, {"purpose": "batch"}))[0] == 200
    assert (await call(gw.url, "POST", "/v1/files", C, {"purpose": "batch"}))[0] == 200
    calls = len(scripted.seen)
    for method, path in (
        ("GET", "/v1/files/file-of-b"),
        ("GET", "/v1/files/file-of-b/content"),
        ("DELETE", "/v1/files/file-of-b"),
        ("GET", "/v1/files/file-made-elsewhere"),
    ):
        status, body = await call(gw.url, method, path, C)
        assert status == 404 and body["error"]["code"] == "not_found", (method, path)
    assert len(scripted.seen) == calls  # none of it reached the provider
    assert (await call(gw.url, "GET", "/v1/files/file-of-c", C))[0] == 200  # its own: positive control
    everything = {"object": "list", "data": [{"id": "file-of-b"}, {"id": "file-of-c"}, {"id": "file-other"}]}
    scripted.script.append((200, everything, {}))
    status, listing = await call(gw.url, "GET", "/v1/files", C)
    assert status == 200 and [f["id"] for f in listing["data"]] == ["file-of-c"]


def test_unknown_grant_is_a_config_error(mock_upstream: MockServer) -> None:
    auth = {"mode": "keys", "keys": [{"key": "k", "tenant": "a", "passthrough": ["filez"]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(gateway_config(mock_upstream.url, auth=auth))
    assert any("auth.keys[0].passthrough" in p for p in err.value.problems)
