"""Header forwarding rules: hop-by-hop dropped both ways, keys replaced, steering headers dropped."""
from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.forward_headers import forward_request_headers, forward_response_headers


def _h(**items: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in items.items()}))


def test_request_hop_by_hop_and_connection_named_dropped() -> None:
    """Connection, Keep-Alive, TE, Proxy-*, Host and fields named in Connection never go upstream."""
    client = _h(Connection="keep-alive, X-Secret-Hop", Keep_Alive="timeout=5", TE="trailers", Host="gw",
                Proxy_Authorization="Basic x", X_Secret_Hop="1", X_Keep="yes", Content_Length="10")
    out = forward_request_headers(client, {}, None)
    assert dict(out) == {"X-Keep": "yes"}


def test_upstream_key_replaces_client_key() -> None:
    """With an upstream api_key, the client's Authorization (and api-key) is never forwarded."""
    out = forward_request_headers(_h(Authorization="Bearer client-key", Api_Key="client-key"), {"X-Org": "o"},
                                  "sk-up")
    assert out["Authorization"] == "Bearer sk-up" and "api-key" not in out and out["X-Org"] == "o"
    assert "client-key" not in str(dict(out))


def test_client_key_forwarded_without_upstream_key() -> None:
    """Without an upstream key, the client's Authorization passes through."""
    assert forward_request_headers(_h(Authorization="Bearer c"), {}, None)["Authorization"] == "Bearer c"


def test_client_steering_headers_dropped() -> None:
    """x-gateway-* headers are for the gateway, never the provider."""
    out = forward_request_headers(
        _h(X_Gateway_Cache="bypass", X_Gateway_Priority="high", Accept="a"), {}, None
    )
    assert dict(out) == {"Accept": "a"}


def test_response_hop_by_hop_dropped_and_request_id_renamed() -> None:
    """Upstream's x-request-id is kept as x-upstream-request-id; ours is the gateway's."""
    up = _h(
        Connection="close, X-Hop",
        X_Hop="1",
        Transfer_Encoding="chunked",
        Content_Type="application/json",
        X_Request_Id="up-1",
        Content_Length="5",
        X_Ratelimit_Remaining_Requests="9",
    )
    out = forward_response_headers(up, decompressed=False)
    assert out == {"content-type": "application/json", "content-length": "5", "x-upstream-request-id": "up-1",
                   "x-ratelimit-remaining-requests": "9"}
    assert "content-length" not in forward_response_headers(up, decompressed=True)
