"""The embeddings cache and micro-batching through the real server,
compared with the provider's own answers."""

from __future__ import annotations

import asyncio
from typing import Any

from openai import AsyncOpenAI

from gateway.mock import MockServer
from policies.cache.runtime import COMPONENT as CACHE
from tests.support.servers import InProcessGateway
from tests.support.until import until

MODEL = "text-embedding-3-small"


def stored(gateway: InProcessGateway) -> int:
    rt = gateway.state.components.get(CACHE)
    return 0 if rt is None or rt.embeddings is None else len(rt.embeddings[0].memory)


async def test_only_unseen_inputs_go_upstream(client: AsyncOpenAI, direct: AsyncOpenAI,
                                              mock_upstream: MockServer, gateway: InProcessGateway) -> None:
    """100 inputs with 90 seen before: 10 go upstream; order,
    vectors and usage equal the provider's full answer."""
    texts = [f"chunk number {i} of the document" for i in range(100)]
    await client.embeddings.create(model=MODEL, input=texts[:90])
    # 90 base64 vectors are ~720 KB: shared out and stored in the work pool, just after the answer
    await until(lambda: stored(gateway) == 90, message="the 90 vectors are stored")
    mock_upstream.recorder.clear()
    resp = await client.embeddings.with_raw_response.create(model=MODEL, input=texts)
    got = resp.parse()
    assert mock_upstream.recorder.count() == 1
    assert mock_upstream.recorder.last().json["input"] == texts[90:]
    assert resp.headers["x-gateway-cache-inputs"] == "90/100"
    want = await direct.embeddings.create(model=MODEL, input=texts)
    assert [d.index for d in got.data] == list(range(100))
    assert [d.embedding for d in got.data] == [d.embedding for d in want.data]
    assert got.usage.prompt_tokens == want.usage.prompt_tokens


async def test_float_format_and_full_hit(
    client: AsyncOpenAI, direct: AsyncOpenAI, mock_upstream: MockServer
) -> None:
    """encoding_format float is cached apart from base64 and a fully cached request makes no call."""
    texts = ["alpha", "beta", "alpha"]
    first = await client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    again = await client.embeddings.with_raw_response.create(
        model=MODEL, input=texts, encoding_format="float"
    )
    want = await direct.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert again.headers["x-gateway-cache"] == "hit"
    assert [d.embedding for d in again.parse().data] == [d.embedding for d in want.data] == \
        [d.embedding for d in first.data]
    assert again.parse().usage.prompt_tokens == want.usage.prompt_tokens
    assert mock_upstream.recorder.count("/v1/embeddings") == 2  # one through the gateway, one direct


async def test_micro_batching_merges_concurrent_calls(make_gateway: Any, direct: AsyncOpenAI,
                                                      mock_upstream: MockServer) -> None:
    """Concurrent single-input requests within the window become one upstream call and are split back."""
    gw = await make_gateway(cache={"embeddings": {"batch_window_ms": 200}})
    texts = [f"query {i}" for i in range(10)]
    async with AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as client:
        answers = await asyncio.gather(*[client.embeddings.create(model=MODEL, input=t) for t in texts])
    assert mock_upstream.recorder.count() == 1
    assert sorted(mock_upstream.recorder.last().json["input"]) == sorted(texts)
    for text, answer in zip(texts, answers, strict=True):
        want = await direct.embeddings.create(model=MODEL, input=text)
        assert answer.data[0].embedding == want.data[0].embedding
        assert answer.usage.prompt_tokens == want.usage.prompt_tokens
    hist = gw.state.metrics.registry.get_sample_value("gateway_embedding_batch_size_sum")
    assert hist == 10


async def test_max_batch_splits(make_gateway: Any, mock_upstream: MockServer) -> None:
    """No upstream call carries more than max_batch inputs."""
    gw = await make_gateway(cache={"embeddings": {"batch_window_ms": 200, "max_batch": 4}})
    async with AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as client:
        await asyncio.gather(*[client.embeddings.create(model=MODEL, input=f"q{i}") for i in range(8)])
    sizes = sorted(len(a.json["input"]) if isinstance(a.json["input"], list) else 1
                   for a in mock_upstream.recorder.attempts)
    assert sizes == [4, 4]
