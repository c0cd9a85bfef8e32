"""The real gateway with ``pool.client: raw`` in front of the fake provider, the official openai SDK as
client: a completion and a stream match what the provider answers directly, on one kept-alive upstream
connection of the raw pool."""
from __future__ import annotations

from typing import Any

import aiohttp
from openai import AsyncOpenAI

from gateway.mock import MockServer
from tests.e2e.conftest import GatewayFactory

CHAT: Any = [{"role": "user", "content": "Say hello"}]


async def test_completion_and_stream_through_the_raw_client(make_gateway: GatewayFactory,
                                                            mock_upstream: MockServer,
                                                            direct: AsyncOpenAI) -> None:
    gw = await make_gateway(upstreams={"mock": {"base_url": mock_upstream.url, "api_key": "sk-upstream",
                                                "pool": {"client": "raw"}}},
                            cache={"exact": {"enabled": False}, "coalesce": {"enabled": False}})
    pool = gw.state.upstreams["mock"].raw
    assert pool is not None and pool.open_count == 0
    async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0) as client:
        for _ in range(2):
            via = await client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=20)
            plain = await direct.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=20)
            assert via.choices[0].message.content == plain.choices[0].message.content != ""
            assert via.usage is not None and via.usage.completion_tokens > 0
        text, finish = "", None
        stream = await client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=20,
                                                      stream=True)
        chunks = 0
        async for chunk in stream:
            if chunk.choices:
                chunks += 1
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
    assert text == plain.choices[0].message.content and finish == "length" and chunks > 2
    assert pool.open_count == 1 and pool.idle_count == 1  # one connection, kept alive between requests
    assert [a.outcome for a in mock_upstream.recorder.attempts][-3:] == ["completed"] * 3


async def test_a_tool_on_the_raw_client_gets_its_query_key(make_gateway: GatewayFactory,
                                                           mock_upstream: MockServer) -> None:
    """A tool route's client adds its key to the query in ``url_for``: the raw client sends that URL too."""
    gw = await make_gateway(tools={"quotes": {"base_url": mock_upstream.base_url, "pool": {"client": "raw"},
                                              "api_key_param": {"query": "apikey", "value": "tool-secret"}}})
    async with aiohttp.ClientSession() as session, session.get(
            gw.url + "/tools/quotes/query?symbol=IBM&apikey=evil") as resp:
        assert resp.status == 200
        body = await resp.json(content_type=None)
    assert body["path"] == "/query" and body["query"] == {"symbol": "IBM", "apikey": "tool-secret"}
