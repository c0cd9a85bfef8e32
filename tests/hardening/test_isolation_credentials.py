"""Issue 16, findings 1 and 2: namespaces from every credential form, and credentials that never cross.

Against the real gateway and the fake provider. Each attack has a positive control: the same client
repeating its own question is a hit (so "miss" is not vacuous), and a forwarding config that asks for
the client's key does forward it (so "not forwarded" is not vacuous).
"""
from __future__ import annotations

import secrets
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.auth import MEMO_MAX_BYTES, Authenticator
from gateway.config import ConfigError, parse_config
from gateway.config_model import AuthConfig
from gateway.mock import MockServer
from tests.support.servers import gateway_config

# (headers, query) of one credential form; "{k}" is the secret.
FORMS: dict[str, tuple[dict[str, str], str]] = {
    "bearer": ({"Authorization": "Bearer {k}"}, ""),
    "bearer_tab": ({"Authorization": "Bearer\t{k}"}, ""),
    "basic": ({"Authorization": "Basic {k}"}, ""),
    "token": ({"Authorization": "Token {k}"}, ""),
    "x_api_key": ({"x-api-key": "{k}"}, ""),
    "api_key": ({"api-key": "{k}"}, ""),
    "query_key": ({}, "key={k}"),
}


async def ask(session: aiohttp.ClientSession, url: str, question: str, headers: dict[str, str] | None = None,
              query: str = "") -> str:
    body = {"model": "gpt-4o", "temperature": 0, "messages": [{"role": "user", "content": question}]}
    async with session.post(
        f"{url}/v1/chat/completions" + (f"?{query}" if query else ""),
        data=orjson.dumps(body),
        headers={"content-type": "application/json", **(headers or {})},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["x-gateway-cache"]


def form(name: str, secret: str) -> tuple[dict[str, str], str]:
    headers, query = FORMS[name]
    return {k: v.format(k=secret) for k, v in headers.items()}, query.format(k=secret)


@pytest.mark.parametrize("name", sorted(FORMS))
async def test_every_credential_form_gets_its_own_namespace(
    make_gateway: Any, mock_upstream: MockServer, name: str
) -> None:
    """Passthrough mode: a keyed answer is never a hit for an anonymous client or another key."""
    gw = await make_gateway()
    question = f"credential form {name} {secrets.token_hex(4)}"
    async with aiohttp.ClientSession() as s:
        headers, query = form(name, "sk-client-a-" + name)
        assert await ask(s, gw.url, question, headers, query) == "miss"
        assert await ask(s, gw.url, question, headers, query) == "hit"  # positive control: its own repeat
        calls = mock_upstream.recorder.count("/v1/chat/completions")
        assert await ask(s, gw.url, question) == "miss"  # no credential: its own anonymous namespace
        other_headers, other_query = form(name, "sk-client-b-" + name)
        assert await ask(s, gw.url, question, other_headers, other_query) == "miss"
        assert mock_upstream.recorder.count("/v1/chat/completions") == calls + 2
        assert await ask(s, gw.url, question) == "hit"  # anonymous clients share the anonymous namespace


async def test_anonymous_answer_is_not_served_to_a_keyed_client(make_gateway: Any) -> None:
    gw = await make_gateway()
    question = f"anonymous first {secrets.token_hex(4)}"
    async with aiohttp.ClientSession() as s:
        assert await ask(s, gw.url, question) == "miss"
        assert await ask(s, gw.url, question, {"x-api-key": "sk-someone"}) == "miss"


def test_identity_memo_holds_digests_only_and_is_bounded_in_bytes() -> None:
    auth = Authenticator(AuthConfig())
    from multidict import CIMultiDict, CIMultiDictProxy

    secret = "sk-raw-secret-" + "x" * 4000
    auth.identify(CIMultiDictProxy(CIMultiDict({"Authorization": "Basic " + secret})))
    assert not any("sk-raw-secret" in k for k in auth._memo)
    for i in range(20000):
        auth.identify(CIMultiDictProxy(CIMultiDict({"x-api-key": f"sk-{i}-" + "y" * 1000})))
        assert auth._memo_bytes <= MEMO_MAX_BYTES
    assert 0 < len(auth._memo) < 20000


KEYS_AUTH = {"mode": "keys", "keys": [{"key": "sk-gw-tenant-a", "tenant": "a"}]}


async def test_keys_mode_never_forwards_client_credentials(
    make_gateway: Any, mock_upstream: MockServer
) -> None:
    """The upstream gets its own key; the tenant's gateway key, x-api-key, api-key and cookies stay here."""
    gw = await make_gateway(auth=KEYS_AUTH)
    async with aiohttp.ClientSession() as s:
        await ask(
            s,
            gw.url,
            "cred 1",
            {
                "Authorization": "Bearer sk-gw-tenant-a",
                "x-api-key": "sk-client-x",
                "api-key": "sk-client-api",
                "Cookie": "session=sk-cookie",
            },
        )
    seen = mock_upstream.recorder.attempts[-1].headers
    lowered = {k.lower(): v for k, v in seen.items()}
    assert lowered["authorization"] == "Bearer sk-upstream-secret"
    assert "x-api-key" not in lowered and "api-key" not in lowered and "cookie" not in lowered
    assert "sk-gw-tenant-a" not in orjson.dumps(seen).decode()


async def test_passthrough_with_upstream_key_drops_client_credentials(
    make_gateway: Any, mock_upstream: MockServer
) -> None:
    gw = await make_gateway()
    async with aiohttp.ClientSession() as s:
        await ask(
            s,
            gw.url,
            "cred 2",
            {"Authorization": "Bearer sk-client", "x-api-key": "sk-client-x", "Cookie": "a=b"},
        )
    lowered = {k.lower(): v for k, v in mock_upstream.recorder.attempts[-1].headers.items()}
    assert lowered["authorization"] == "Bearer sk-upstream-secret"
    assert "x-api-key" not in lowered and "cookie" not in lowered


def test_keys_mode_upstream_without_key_is_a_config_error(mock_upstream: MockServer) -> None:
    cfg = gateway_config(
        mock_upstream.url, auth=KEYS_AUTH, upstreams={"mock": {"base_url": mock_upstream.url}}
    )
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert any("upstreams.mock.api_key" in p and "forward_client_key" in p for p in err.value.problems)


async def test_forward_client_key_forwards_on_purpose(make_gateway: Any, mock_upstream: MockServer) -> None:
    """Positive control: with ``forward_client_key: true`` the provider does see the client's key."""
    gw = await make_gateway(
        auth=KEYS_AUTH, upstreams={"mock": {"base_url": mock_upstream.url, "forward_client_key": True}}
    )
    async with aiohttp.ClientSession() as s:
        await ask(s, gw.url, "cred 3", {"Authorization": "Bearer sk-gw-tenant-a", "Cookie": "a=b"})
    lowered = {k.lower(): v for k, v in mock_upstream.recorder.attempts[-1].headers.items()}
    assert lowered["authorization"] == "Bearer sk-gw-tenant-a"
    assert "cookie" not in lowered
