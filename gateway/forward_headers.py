"""The headers an upstream call forwards: the client's request headers as the upstream gets them, and the
upstream's response headers as the client gets them (hop-by-hop fields, credentials and steering dropped).
Shared by both upstream clients (``gateway/upstream.py``)."""
from __future__ import annotations

import sys
from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 hop-by-hop fields, plus what we set ourselves.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "proxy-connection",
})
# Cookies are never forwarded: no LLM provider authenticates with them, and a browser's cookies for the
# gateway's origin are the gateway's business only.
_REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "accept-encoding",
    "content-encoding",
    "expect",
    "cookie",
}
CLIENT_CREDENTIALS = frozenset({"authorization", "api-key", "x-api-key", "cookie"})
_REQUEST_DROP_KEYED = _REQUEST_DROP | CLIENT_CREDENTIALS  # the upstream has its own key, or keys mode
_RESPONSE_DROP = HOP_BY_HOP | {"date", "server", "content-encoding", "x-request-id"}
_RESPONSE_DROP_DECOMPRESSED = _RESPONSE_DROP | {"content-length"}  # the length of the compressed body
_CLIENT_STEERING_PREFIXES = ("x-gateway-",)


def connection_named(headers: Mapping[str, str]) -> set[str]:
    """Header names listed in ``Connection``: hop-by-hop for this message only."""
    value = headers.get("connection", "")
    return {v.strip().lower() for v in value.split(",") if v.strip()} if value else set()


def forward_request_headers(
    client: CIMultiDictProxy[str],
    extra: Mapping[str, str],
    api_key: str | None,
    forward_credentials: bool = True,
) -> CIMultiDict[str]:
    """The client's headers as the upstream gets them. Its credentials go only when the upstream has no key
    of its own and ``forward_credentials`` (passthrough mode, or ``forward_client_key: true``)."""
    # One set lookup per header (the client's credentials are in the drop set when they must not go).
    drop = _REQUEST_DROP if api_key is None and forward_credentials else _REQUEST_DROP_KEYED
    if "connection" in client:
        drop = drop | connection_named(client)
    out: CIMultiDict[str] = CIMultiDict()
    add = out.add
    for name, value in client.items():
        lower = name.lower()
        if lower in drop or lower.startswith(_CLIENT_STEERING_PREFIXES):
            continue
        add(name, value)
    if extra:
        out.update(extra)
    if api_key is not None:
        out["Authorization"] = "Bearer " + api_key
    return out


def forward_response_headers(upstream: CIMultiDictProxy[str], decompressed: bool) -> dict[str, str]:
    drop = _RESPONSE_DROP_DECOMPRESSED if decompressed else _RESPONSE_DROP
    if "connection" in upstream:
        drop = drop | connection_named(upstream)
    out: dict[str, str] = {}
    upstream_rid = None
    for name, value in upstream.items():
        lower = name.lower()
        if lower in drop:
            if lower == "x-request-id" and upstream_rid is None:
                upstream_rid = value
            continue
        out[sys.intern(lower)] = value  # shared names: a stream kept its own lowered copies (~0.4 KB)
    if upstream_rid is not None:
        out["x-upstream-request-id"] = upstream_rid
    return out
