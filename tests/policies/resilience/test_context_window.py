"""Classifying a provider 400 as "prompt too long", and replaying it untouched."""
from __future__ import annotations

import pytest

from gateway.body import Chunks
from gateway.exchange import UpstreamResponse
from policies.resilience.context_window import is_context_exceeded, read_error


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"error":{"code":"context_length_exceeded","message":"x"}}', True),
    (b'{"error":{"code":null,"message":"This model\'s maximum context length is 8192 tokens."}}', True),
    (b'{"error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens"}}', True),
    (b'{"error":{"code":"content_filter","message":"filtered"}}', False),
    (b'{"error":"flat string"}', False),
    (b"not json", False),
    (b"[1]", False),
])
def test_is_context_exceeded(raw: bytes, expected: bool) -> None:
    assert is_context_exceeded(raw) is expected


async def test_read_error_replays_the_bytes_it_read() -> None:
    body = [b'{"error":{"code":"context_', b'length_exceeded"}}']
    resp = UpstreamResponse(400, {"content-type": "application/json"}, Chunks(list(body)), upstream="a")
    exceeded, same = await read_error(resp, 1.0)
    assert exceeded and same.status == 400 and same.upstream == "a"
    assert b"".join([c async for c in same.body]) == b"".join(body)
