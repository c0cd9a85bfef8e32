"""A large vision request through the real gateway: the provider receives the very image bytes.

Bodies of a MiB or more have their long base64 strings kept out of the parsed JSON
(gateway/blobs.py); every path that re-serialises the body (usage splice for streams, a merged
``stream_options``, a route's model rewrite) must put them back byte for byte.
"""
from __future__ import annotations

import base64
import os
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.blobs import PREFIX
from gateway.mock import MockServer
from tests.e2e.conftest import GatewayFactory

IMAGE = "data:image/png;base64," + base64.b64encode(os.urandom(3 << 20)).decode()  # a 4 MB body
ROUTES = [
    {"match": {"model": "vision-alias"}, "upstream": "mock", "model": "gpt-4o"},
    {"match": {"model": "*"}, "upstream": "mock"},
]


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, **extra, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}}]}]}


CASES = [
    ("unchanged", body("gpt-4o")),
    ("stream, usage spliced in", body("gpt-4o", stream=True)),
    ("stream, stream_options merged", body("gpt-4o", stream=True, stream_options={})),
    ("model rewritten by the route", body("vision-alias")),
]


@pytest.mark.parametrize(("name", "sent"), CASES, ids=[n for n, _ in CASES])
async def test_provider_receives_the_identical_image(
    make_gateway: GatewayFactory, mock_upstream: MockServer, name: str, sent: dict[str, Any]
) -> None:
    gw = await make_gateway(routes=ROUTES)
    raw = orjson.dumps(sent)
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.url + "/v1/chat/completions", data=raw,
               headers={"content-type": "application/json", "authorization": "Bearer sk-c"}) as r,
    ):
        assert r.status == 200, await r.text()
        await r.read()
    [attempt] = [a for a in mock_upstream.recorder.attempts if a.path == "/v1/chat/completions"]
    assert PREFIX not in attempt.body
    got = orjson.loads(attempt.body)
    assert got["messages"] == sent["messages"]  # the image, byte for byte
    assert got["model"] == "gpt-4o"
    if name == "unchanged":
        assert attempt.body == raw  # the client's own bytes
    if sent.get("stream"):
        assert got["stream_options"] == {"include_usage": True}


async def test_a_large_body_that_is_not_json_is_still_a_400(
    make_gateway: GatewayFactory, mock_upstream: MockServer
) -> None:
    gw = await make_gateway()
    broken = orjson.dumps(body("gpt-4o"))[:-3]  # cut inside the closing brackets
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.url + "/v1/chat/completions", data=broken,
               headers={"content-type": "application/json", "authorization": "Bearer sk-c"}) as r,
    ):
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_json"
    assert mock_upstream.recorder.count("/v1/chat/completions") == 0
