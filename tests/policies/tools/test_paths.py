"""Tool paths: the client picks a path below the base URL, never the host or anything above the base path."""
from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import LocalReply
from gateway.paths import safe_subpath
from policies.tools.config import ApiKeyParam, ToolConfig
from policies.tools.paths import (
    ToolClient,
    make_tool_client,
    split_tool_path,
    tool_headers,
    tool_query,
)
from tests.support.exchange import build_exchange


def test_split() -> None:
    """The first segment names the tool; the rest (raw) is the path below its base URL."""
    assert split_tool_path("/tools/quotes/v1/quote") == ("quotes", "/v1/quote")
    assert split_tool_path("/tools/quotes") == ("quotes", "")
    assert split_tool_path("/tools/") is None and split_tool_path("/v1/x") is None


@pytest.mark.parametrize("rest", ["/..", "/a/../b", "/%2e%2e/x", "/%2E%2e", "/.", "/a%2Fb", "/a%5Cb",
                                  "/a%00b", "/a%0d%0aX-Injected:1", "/a%3Fb", "/a%23b"])
def test_escapes_refused(rest: str) -> None:
    """Dot segments (plain or encoded), encoded separators and control characters are a 400."""
    with pytest.raises(LocalReply) as exc:
        safe_subpath(rest)
    assert exc.value.status == 400 and exc.value.code == "invalid_tool_path"


@pytest.mark.parametrize("rest", ["", "/", "/query", "/a/b.json", "/a..b", "/%40evil.com", "/caf%C3%A9",
                                  "//x"])
def test_ordinary_paths_kept_raw(rest: str) -> None:
    """Ordinary paths pass unchanged (still percent-encoded)."""
    assert safe_subpath(rest) == rest


def test_query_drops_client_copy_of_key_param() -> None:
    """A client cannot override (or learn about) the provider key through the query string."""
    key = ApiKeyParam(query="apikey", value="s")
    assert tool_query("symbol=IBM&apikey=evil&api%6Bey=evil2&x=1", key) == "symbol=IBM&x=1"
    assert tool_query("a=1&&b=2", None) == "a=1&b=2" and tool_query("", key) == ""


def test_client_credentials_never_forwarded() -> None:
    """Authorization, api-key, x-api-key and cookies are the client's business with the gateway only."""
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer k", "Api-Key": "k", "X-Api-Key": "k",
                                            "Cookie": "c", "Accept": "application/json"}))
    assert dict(tool_headers(headers)) == {"Accept": "application/json"}


async def test_client_adds_key_at_send_time() -> None:
    """The key is added to the URL by the client, never stored on the exchange; the host is the base URL's."""
    client = make_tool_client("quotes", ToolConfig(base_url="https://quotes.example/api/",
                                                   api_key_param=ApiKeyParam(query="apikey", value="s e")))
    try:
        assert isinstance(client, ToolClient) and client.name == "quotes"
        ex = build_exchange(request_id="r", method="GET", path="/tools/quotes/q", operation="tool",
                      headers=CIMultiDictProxy(CIMultiDict()), raw_body=b"", body=None, received_at=0.0,
                      deadline=1.0, query_string="symbol=IBM", upstream_path="/q")
        assert client.url_for(ex) == "https://quotes.example/api/q?symbol=IBM&apikey=s%20e"
        ex.request = ex.request._replace(query_string="")
        assert client.url_for(ex) == "https://quotes.example/api/q?apikey=s%20e"
        assert "s%20e" not in ex.request.query_string
    finally:
        await client.close()


async def test_header_key_goes_in_extra_headers() -> None:
    """A header-style key becomes one of the client's fixed headers."""
    client = make_tool_client("t", ToolConfig(base_url="http://127.0.0.1:9", headers={"Accept": "x"},
                                              api_key_param=ApiKeyParam(header="X-Key", value="s")))
    try:
        assert dict(client.extra_headers) == {"Accept": "x", "X-Key": "s"} and client.key_query == ""
    finally:
        await client.close()
