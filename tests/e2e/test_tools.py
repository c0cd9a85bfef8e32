"""Tool-provider routes end to end: /tools/{name}/{path} through the real gateway to the mock's echo."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from yarl import URL

from gateway.mock import MockServer
from policies.resilience.registry import COMPONENT as RESILIENCE
from tests.support.servers import InProcessGateway, free_port

FAST = {"max_attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.05}


async def tools_gateway(make_gateway: Any, mock: MockServer, **extra: Any) -> InProcessGateway:
    dead = f"http://127.0.0.1:{free_port()}"
    return await make_gateway(tools={
        "quotes": {"base_url": mock.base_url, "api_key_param": {"query": "apikey", "value": "tool-secret"},
                   "retry": FAST},
        "orders": {"base_url": mock.base_url, "api_key_param": {"header": "x-api-key", "value": "hdr-secret"},
                   "retry": FAST},
        "search": {"base_url": mock.base_url + "/v0", "read_only": True, "retry": FAST},
        "down": {"base_url": dead, "retry": FAST, "circuit_breaker": {"consecutive_failures": 5},
                 "fallback_response": {"status": 200, "json": {"note": "quotes temporarily unavailable"}}},
    }, **extra)


async def call(gw: InProcessGateway, method: str, path: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, URL(gw.url + path, encoded=True), **kw) as resp:  # sent as written
            body = await resp.json(content_type=None) if method != "HEAD" else None
            return resp.status, dict(resp.headers), body


async def queue_fault(mock: MockServer, fault: str, path: str, times: int = 1) -> None:
    async with aiohttp.ClientSession() as session, session.post(mock.base_url + "/_mock/faults",
                            json={"fault": fault, "times": times, "match": {"path": path}}) as resp:
        assert resp.status == 200


async def test_read_proxied_with_query_key_and_no_client_credentials(make_gateway: Any,
                                                                     mock_upstream: MockServer) -> None:
    """GET goes to base_url + path with the configured key; the client's key and its own apikey never pass."""
    gw = await tools_gateway(make_gateway, mock_upstream)
    status, headers, body = await call(gw, "GET", "/tools/quotes/query?function=QUOTE&symbol=IBM&apikey=evil",
                                       headers={"Authorization": "Bearer sk-client-secret", "Cookie": "s=1"})
    assert status == 200 and body["method"] == "GET" and body["path"] == "/query"
    assert body["query"] == {"function": "QUOTE", "symbol": "IBM", "apikey": "tool-secret"}
    assert headers["x-gateway-upstream"] == "quotes" and headers["x-gateway-attempts"] == "1"
    sent = mock_upstream.recorder.attempts[-1].headers
    assert "authorization" not in sent and "cookie" not in sent


async def test_header_key_replaces_client_header(make_gateway: Any, mock_upstream: MockServer) -> None:
    """A header-style key is set by the gateway, whatever the client sent under that name."""
    gw = await tools_gateway(make_gateway, mock_upstream)
    status, _, body = await call(gw, "POST", "/tools/orders/orders", json={"qty": 1},
                                 headers={"x-api-key": "evil"})
    assert status == 200 and body["body"] == {"qty": 1} and body["path"] == "/orders"
    assert mock_upstream.recorder.attempts[-1].headers["x-api-key"] == "hdr-secret"


async def test_read_retried(make_gateway: Any, mock_upstream: MockServer) -> None:
    """A read that meets a 503 is retried and succeeds."""
    gw = await tools_gateway(make_gateway, mock_upstream)
    await queue_fault(mock_upstream, "status=503", "/query")
    status, headers, _ = await call(gw, "GET", "/tools/quotes/query")
    assert status == 200 and headers["x-gateway-attempts"] == "2"
    assert [a.status for a in mock_upstream.recorder.attempts] == [503, 200]


async def test_write_gets_exactly_one_attempt(make_gateway: Any, mock_upstream: MockServer) -> None:
    """A write is never retried: a reset before headers is a 502, a 503 is passed back, one attempt each."""
    gw = await tools_gateway(make_gateway, mock_upstream)
    status, headers, body = await call(gw, "POST", "/tools/orders/orders", json={"qty": 1},
                                       headers={"x-mock-fault": "reset_before_headers"})
    assert status == 502 and body["error"]["code"] == "reset_before_response"
    assert headers["x-gateway-attempts"] == "1" and "x-should-retry" not in headers
    assert len(mock_upstream.recorder.attempts) == 1
    status, _, _ = await call(gw, "DELETE", "/tools/orders/orders/7", headers={"x-mock-fault": "status=503"})
    assert status == 503 and len(mock_upstream.recorder.attempts) == 2


async def test_read_only_tool_retries_posts(make_gateway: Any, mock_upstream: MockServer) -> None:
    """read_only: true makes every method a read, so a POST is retried; the base path is kept."""
    gw = await tools_gateway(make_gateway, mock_upstream)
    await queue_fault(mock_upstream, "reset_before_headers", "/v0/find")
    status, _, body = await call(gw, "POST", "/tools/search/find", json={"q": "llm"})
    assert status == 200 and body["path"] == "/v0/find" and body["body"] == {"q": "llm"}
    assert len(mock_upstream.recorder.attempts) == 2


async def test_fallback_response_when_provider_down(make_gateway: Any, mock_upstream: MockServer) -> None:
    """A dead tool provider answers with fallback_response + x-gateway-fallback; once open, at once."""
    gw = await tools_gateway(make_gateway, mock_upstream)
    for _ in range(2):
        status, headers, body = await call(gw, "GET", "/tools/down/quote")
        assert status == 200 and body == {"note": "quotes temporarily unavailable"}
        assert headers["x-gateway-fallback"] == "true" and "x-gateway-upstream" not in headers
        assert "x-should-retry" not in headers
    assert gw.state.components[RESILIENCE].breakers["tool:down"].state == "open"
    started = time.perf_counter()
    status, headers, _ = await call(gw, "GET", "/tools/down/quote")
    assert status == 200 and headers["x-gateway-fallback"] == "true" and headers["x-gateway-attempts"] == "0"
    assert time.perf_counter() - started < 0.5


async def test_client_cannot_leave_the_base_path(make_gateway: Any, mock_upstream: MockServer) -> None:
    """Dot segments and encoded slashes are refused; unknown tools are 404; nothing reaches the provider."""
    gw = await tools_gateway(make_gateway, mock_upstream)
    for path in ("/tools/search/%2e%2e/admin", "/tools/search/../admin", "/tools/search/a%2Fb",
                 "/tools/search/x/%2E/y", "/tools/search/a%5c..%5cb"):
        status, _, body = await call(gw, "GET", path)
        assert status == 400 and body["error"]["code"] == "invalid_tool_path", path
    for path in ("/tools/nope/x", "/tools/"):
        status, _, _ = await call(gw, "GET", path)
        assert status == 404
    assert mock_upstream.recorder.attempts == []


async def test_host_comes_from_config_only(make_gateway: Any, mock_upstream: MockServer) -> None:
    """An absolute-form request target or an '@host' path cannot redirect the call to another host."""
    gw = await tools_gateway(make_gateway, mock_upstream)
    status, _, body = await call(gw, "GET", "/tools/search/@evil.example/x")
    assert status == 200 and body["path"] == "/v0/@evil.example/x"
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET http://evil.example/tools/search/abs HTTP/1.1\r\nHost: evil.example\r\n"
                 b"Connection: close\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        raw = await reader.read()
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200") and b'"/v0/abs"' in raw
    assert [a.path for a in mock_upstream.recorder.attempts] == ["/v0/@evil.example/x", "/v0/abs"]


async def test_tool_routes_require_gateway_auth(make_gateway: Any, mock_upstream: MockServer) -> None:
    """With auth keys on, tool routes need a gateway key like every other route."""
    gw = await tools_gateway(make_gateway, mock_upstream,
                             auth={"mode": "keys", "keys": [{"key": "gw-key", "tenant": "t1"}]})
    status, _, _ = await call(gw, "GET", "/tools/quotes/q")
    assert status == 401 and mock_upstream.recorder.attempts == []
    status, _, _ = await call(gw, "GET", "/tools/quotes/q", headers={"Authorization": "Bearer gw-key"})
    assert status == 200 and "authorization" not in mock_upstream.recorder.attempts[-1].headers
