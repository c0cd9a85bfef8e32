"""The embeddings cache policy: per-input hits, partial requests, bypass."""
from __future__ import annotations

import orjson

from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.embeddings_layer import factory
from tests.policies.cache.support import body_of, drain, exchange, make_state


class Embeds:
    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        inputs = ex.body["input"] if isinstance(ex.body["input"], list) else [ex.body["input"]]  # type: ignore[index]
        self.sent.append(inputs)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t))]} for i, t in enumerate(inputs)
        ]
        payload = {"object": "list", "data": data, "model": "e", "usage": {"prompt_tokens": 2 * len(inputs),
                                                                           "total_tokens": 2 * len(inputs)}}
        return UpstreamResponse(200, {"content-type": "application/json"}, body_of([orjson.dumps(payload)]))


def emb(inputs: list[str] | str, **headers: str) -> dict:  # type: ignore[type-arg]
    return {"model": "e", "input": inputs}


async def test_partial_and_full_hits() -> None:
    """Only unseen inputs go upstream; answers come back in order with the full usage."""
    st = make_state(cache={"embeddings": {"batch_window_ms": 0}})
    policy = await factory(st, st.config)
    up = Embeds()
    await drain(await policy(exchange(st, emb(["a", "bb"]), operation="embeddings"), up))
    ex = exchange(st, emb(["bb", "ccc", "a", "ccc"]), operation="embeddings")
    out = orjson.loads(await drain(await policy(ex, up)))
    assert up.sent == [["a", "bb"], ["ccc"]]
    assert [d["embedding"] for d in out["data"]] == [[2.0], [3.0], [1.0], [3.0]]
    assert out["usage"]["prompt_tokens"] == 8 and ex.response_headers["x-gateway-cache-inputs"] == "2/4"
    full = exchange(st, emb(["a", "ccc"]), operation="embeddings")
    resp = await policy(full, up)
    assert resp.source == "cache" and full.record.cache_result == "hit" and len(up.sent) == 2


async def test_bypass() -> None:
    """x-gateway-cache: bypass sends everything upstream and stores nothing."""
    st = make_state()
    policy = await factory(st, st.config)
    up = Embeds()
    for _ in range(2):
        ex = exchange(st, emb(["a", "b"]), headers={"x-gateway-cache": "bypass"}, operation="embeddings")
        await drain(await policy(ex, up))
    assert len(up.sent) == 2 and ex.record.cache_result == "bypass"
