"""Issue 16, finding 5 (partly): passthrough in keys mode keeps tenants off the provider account's stored objects.

Stateful endpoints (files, batches, stored responses, vector stores, fine-tuning, assistants,
threads...) answer 403 unless the tenant's key is granted the family; ``previous_response_id`` follows
the same rule. Positive controls: a granted tenant reaches them, and stateless passthrough still works.
"""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from gateway.config import ConfigError, parse_config
from gateway.mock import MockServer
from tests.support.servers import gateway_config

AUTH = {"mode": "keys", "keys": [{"key": "sk-gw-a", "tenant": "a"},
                                 {"key": "sk-gw-b", "tenant": "b", "passthrough": ["files", "responses"]}]}
A = {"Authorization": "Bearer sk-gw-a"}
B = {"Authorization": "Bearer sk-gw-b"}
ATTACKS = [("GET", "/v1/files"), ("GET", "/v1/files/file-1/content"), ("DELETE", "/v1/files/file-1"),
           ("GET", "/v1/batches"), ("POST", "/v1/batches"), ("GET", "/v1/responses/resp_of_b"),
           ("DELETE", "/v1/responses/resp_of_b"), ("GET", "/v1/vector_stores"), ("GET", "/v1/fine_tuning/jobs"),
           ("GET", "/v1/assistants"), ("POST", "/v1/threads")]


async def call(url: str, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url + path, headers={"content-type": "application/json", **headers},
                             data=orjson.dumps(body) if body is not None else None) as resp:
            raw = await resp.read()
            return resp.status, orjson.loads(raw) if raw.startswith(b"{") else raw


async def test_ungranted_tenant_never_reaches_stateful_endpoints(make_gateway: Any,
                                                                 mock_upstream: MockServer) -> None:
    gw = await make_gateway(passthrough=True, auth=AUTH)
    for method, path in ATTACKS:
        status, body = await call(gw.url, method, path, A, {} if method == "POST" else None)
        assert status == 403 and body["error"]["code"] == "endpoint_not_granted", (method, path)
    assert len(mock_upstream.recorder.attempts) == 0
    assert (await call(gw.url, "GET", "/v1/files", B))[0] == 200  # granted: positive control
    assert (await call(gw.url, "POST", "/v1/moderations", A, {"input": "x"}))[0] == 200  # stateless
    assert len(mock_upstream.recorder.attempts) == 2


async def test_previous_response_id_needs_the_responses_grant(make_gateway: Any) -> None:
    gw = await make_gateway(passthrough=True, auth=AUTH)
    ask = {"model": "gpt-4o", "input": "hi", "previous_response_id": "resp_of_b"}
    status, body = await call(gw.url, "POST", "/v1/responses", A, ask)
    assert status == 403 and body["error"]["param"] == "previous_response_id"
    assert (await call(gw.url, "POST", "/v1/responses", A, {"model": "gpt-4o", "input": "hi"}))[0] == 200
    assert (await call(gw.url, "POST", "/v1/responses", B, ask))[0] == 200


def test_unknown_grant_is_a_config_error(mock_upstream: MockServer) -> None:
    auth = {"mode": "keys", "keys": [{"key": "k", "tenant": "a", "passthrough": ["filez"]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(gateway_config(mock_upstream.url, auth=auth))
    assert any("auth.keys[0].passthrough" in p for p in err.value.problems)
