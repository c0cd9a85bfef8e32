"""Map ``/tools/{name}/{rest}?{query}`` onto the tool's ``base_url`` without letting the client steer it.

The upstream URL is always ``base_url + "/" + rest``: the host comes from config
only, and because a "/" always follows the base, nothing in ``rest`` can become
a userinfo or host part. What remains is the base *path*: yarl (and most servers)
resolve ``..`` and ``%2e%2e`` segments, so any dot segment, any encoded slash or
backslash and any control character is refused with a 400 instead of being
forwarded. The client's credentials for the gateway never reach a tool provider,
and the provider key is added by the gateway's client at send time, never stored
on the exchange, so it cannot end up in a log line or a span.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_plus

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config_model import UpstreamConfig
from gateway.exchange import Exchange
from gateway.upstream import UpstreamClient
from policies.tools.config import ApiKeyParam, ToolConfig

TOOLS_PREFIX = "/tools/"
# Credentials meant for the gateway (or for an LLM provider) must never reach a third-party tool.
_CLIENT_CREDENTIALS = frozenset({"authorization", "api-key", "x-api-key", "cookie", "proxy-authorization"})


def split_tool_path(raw_path: str) -> tuple[str, str] | None:
    """``("quotes", "/query")`` from ``/tools/quotes/query``; None without a tool name."""
    if not raw_path.startswith(TOOLS_PREFIX):
        return None
    name, slash, rest = raw_path[len(TOOLS_PREFIX):].partition("/")
    name = unquote(name)
    return (name, slash + rest) if name else None


def tool_query(raw_query: str, key: ApiKeyParam | None) -> str:
    """The client's query string, minus any parameter named like the provider key."""
    if not raw_query:
        return ""
    parts = [p for p in raw_query.split("&") if p]
    if key is not None and key.query:
        parts = [p for p in parts if unquote_plus(p.partition("=")[0]) != key.query]
    return "&".join(parts)


def tool_headers(headers: CIMultiDictProxy[str]) -> CIMultiDictProxy[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in _CLIENT_CREDENTIALS:
            out.add(name, value)
    return CIMultiDictProxy(out)


@dataclass(slots=True)
class ToolClient(UpstreamClient):
    """An ``UpstreamClient`` that adds the provider's key as a query parameter at send time."""

    key_query: str = ""

    def url_for(self, ex: Exchange) -> str:
        url = self.base_url + ex.request.upstream_path
        query = (
            f"{ex.request.query_string}&{self.key_query}"
            if ex.request.query_string and self.key_query
            else (ex.request.query_string or self.key_query)
        )
        return f"{url}?{query}" if query else url


def make_tool_client(name: str, cfg: ToolConfig) -> ToolClient:
    """The pooled client of one tool: same pooling, timeouts and failure mapping as an upstream."""
    key = cfg.api_key_param
    headers = dict(cfg.headers)
    if key is not None and key.header:
        headers[key.header] = key.value
    up = UpstreamConfig(base_url=cfg.base_url, headers=headers, pool=cfg.pool, timeouts=cfg.timeouts)
    client = ToolClient.create(name, up)
    assert isinstance(client, ToolClient)
    if key is not None and key.query:
        client.key_query = f"{quote(key.query, safe='')}={quote(key.value, safe='')}"
    return client
