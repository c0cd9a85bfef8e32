"""Micro-batching: concurrent single inputs share one call, split back in order; errors reach everyone."""
from __future__ import annotations

import asyncio

import orjson

from gateway.body import OneChunk
from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.batcher import Batcher, Failed, Share
from policies.cache.embeddings import Input, shares
from tests.support.exchange import build_exchange


async def by_length(data: bytes, items: list[Input]) -> tuple[list[bytes], list[int]] | None:
    """What the embeddings layer hands the batcher: parse the answer, share its tokens (here by length)."""
    return shares(data, items, len)


def exchange() -> Exchange:
    return build_exchange(request_id="r", method="POST", path="/", operation="embeddings",
                          headers=None,  # type: ignore[arg-type]
                    raw_body=b"", body={"model": "m", "input": "x"}, received_at=0, deadline=1e9)


async def test_merges_and_splits() -> None:
    """Four concurrent submissions make one call; each gets its own vector and token share."""
    sent: list[list[str]] = []

    async def call(ex: Exchange) -> UpstreamResponse:
        inputs = ex.body["input"]  # type: ignore[index]
        sent.append(inputs)
        data = [{"index": i, "embedding": [float(len(t))]} for i, t in enumerate(inputs)]
        return UpstreamResponse(200, {},
                                OneChunk(orjson.dumps({"data": data, "usage": {"prompt_tokens": 10}})))

    batcher = Batcher()
    results = await asyncio.gather(*[batcher.submit("k", exchange(), call, "x" * (i + 1), 0.05, 100,
                                                    by_length)
                                     for i in range(4)])
    assert sent == [["x", "xx", "xxx", "xxxx"]]
    assert [r.vector for r in results if isinstance(r, Share)] == [b"[1.0]", b"[2.0]", b"[3.0]", b"[4.0]"]
    assert sum(r.tokens for r in results if isinstance(r, Share)) == 10


async def test_error_reaches_everyone() -> None:
    """A provider error is handed to every caller of the batch."""
    async def call(ex: Exchange) -> UpstreamResponse:
        return UpstreamResponse(429, {"retry-after": "1"}, OneChunk(b'{"error":{}}'))

    batcher = Batcher()
    results = await asyncio.gather(*[batcher.submit("k", exchange(), call, str(i), 0.05, 2,
                                                    by_length) for i in range(2)])
    assert all(isinstance(r, Failed) and r.status == 429 for r in results)


async def test_an_unusable_answer_fails_everyone_with_502() -> None:
    """A 200 whose vectors cannot be shared out (wrong count) is a 502 for each caller, not a crash."""
    async def call(ex: Exchange) -> UpstreamResponse:
        return UpstreamResponse(200, {}, OneChunk(b'{"data":[],"usage":{"prompt_tokens":1}}'))

    batcher = Batcher()
    results = await asyncio.gather(*[batcher.submit("k", exchange(), call, str(i), 0.05, 2,
                                                    by_length) for i in range(2)])
    assert all(isinstance(r, Failed) and r.status == 502 for r in results)
