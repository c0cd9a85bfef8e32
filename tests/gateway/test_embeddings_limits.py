"""/v1/embeddings limits (gateway.embeddings_limits) through the real server and the openai SDK."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from gateway.mock import MockServer
from tests.support.servers import InProcessGateway, gateway_config, start_gateway

MODEL = "text-embedding-3-small"


def limited(url: str, **limits: int) -> dict[str, Any]:
    return gateway_config(url, upstreams={"mock": {"base_url": url, "api_key": "sk-upstream-secret",
                                                   "limits": limits}})


async def with_gateway(cfg: dict[str, Any], test: Callable[[AsyncOpenAI], Awaitable[None]]) -> None:
    gw: InProcessGateway = await start_gateway(cfg)
    try:
        async with AsyncOpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0) as client:
            await test(client)
    finally:
        await gw.close()


async def test_too_many_inputs_is_a_400_naming_the_limit(mock_upstream: MockServer) -> None:
    async def test(client: AsyncOpenAI) -> None:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model=MODEL, input=[f"t{i}" for i in range(11)])
        error = caught.value.body
        assert isinstance(error, dict) and error["type"] == "invalid_request_error"
        assert error["param"] == "input"
        assert "at most 10 inputs" in error["message"] and "embeddings_max_inputs" in error["message"]
        assert mock_upstream.recorder.count("/v1/embeddings") == 0
        ok = await client.embeddings.create(model=MODEL, input=[f"t{i}" for i in range(10)])  # control
        assert len(ok.data) == 10 and mock_upstream.recorder.count("/v1/embeddings") == 1

    await with_gateway(limited(mock_upstream.url, embeddings_max_inputs=10), test)


async def test_too_many_tokens_is_a_400(mock_upstream: MockServer) -> None:
    async def test(client: AsyncOpenAI) -> None:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model=MODEL, input=["hello world " * 30, "more words " * 30])
        assert "at most 50 tokens" in str(caught.value)
        assert mock_upstream.recorder.count("/v1/embeddings") == 0
        await client.embeddings.create(model=MODEL, input=["hello world " * 20])  # control: 40 tokens
        assert mock_upstream.recorder.count("/v1/embeddings") == 1

    await with_gateway(limited(mock_upstream.url, embeddings_max_tokens=50), test)


async def test_the_defaults_are_openais(mock_upstream: MockServer) -> None:
    async def test(client: AsyncOpenAI) -> None:
        with pytest.raises(openai.BadRequestError, match="at most 2048 inputs"):
            await client.embeddings.create(model=MODEL, input=["x"] * 2049)
        assert mock_upstream.recorder.count("/v1/embeddings") == 0

    await with_gateway(gateway_config(mock_upstream.url), test)
