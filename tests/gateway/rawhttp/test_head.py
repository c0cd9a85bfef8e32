"""The request head and where it goes: one bytes object, Content-Length only with a body, no header
injection, targets percent-encoded as aiohttp would, Host without the default port."""
from __future__ import annotations

import pytest

from gateway.rawhttp.head import request_head, request_target
from gateway.rawhttp.origin import Origin


def test_head_with_and_without_a_body() -> None:
    head = request_head("POST", "/v1/chat", "api.example", [("Authorization", "Bearer k")], 12)
    assert head == (b"POST /v1/chat HTTP/1.1\r\nHost: api.example\r\nAuthorization: Bearer k\r\n"
                    b"Content-Length: 12\r\n\r\n")
    assert request_head("GET", "/v1/models", "h", [], None) == b"GET /v1/models HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.mark.parametrize("name,value", [("X-A", "1\r\nX-Injected: 2"), ("X-B\n", "1"), ("X-C", "bare\r")])
def test_a_line_break_in_a_header_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="Newline or carriage return"):
        request_head("POST", "/", "h", [(name, value)], 0)
    assert request_head("POST", "/", "h", [(name.strip(), "ok")], 0)  # control: the same name, a clean value


def test_targets_are_encoded_only_when_not_plain() -> None:
    plain = "/v1/chat/completions?api-version=2024-06-01"
    assert request_target(plain) == plain
    assert request_target("/v1/files/a b") == "/v1/files/a%20b"
    assert request_target("/v1/q?text=é") == "/v1/q?text=%C3%A9"


def test_origin_from_base_url() -> None:
    plain = Origin.from_url("http://127.0.0.1:9000/v1/")
    assert (plain.host, plain.port, plain.tls, plain.prefix, plain.host_header) == (
        "127.0.0.1", 9000, False, "/v1", "127.0.0.1:9000")
    tls = Origin.from_url("https://api.openai.com/v1")
    assert (tls.port, tls.tls, tls.host_header) == (443, True, "api.openai.com")
    assert tls.ssl_context() is not None and plain.ssl_context() is None
    assert Origin.from_url("http://[::1]:8080").host_header == "[::1]:8080"
    with pytest.raises(ValueError):
        Origin.from_url("ftp://x/")
