"""The embeddings cache policy: per-input hits, partial requests, bypass."""
from __future__ import annotations

from typing import Any

import orjson

from gateway.appstate import AppState
from gateway.exchange import Exchange, UpstreamResponse
from gateway.tokens.pool import WorkPool
from policies.cache.embeddings import input_key, params_of
from policies.cache.embeddings_layer import factory
from tests.policies.cache.support import body_of, drain, exchange, make_state
from tests.support.until import until


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


class WideEmbeds(Embeds):
    """Vectors of 4,000 floats: 30 inputs make a ~600 KB answer, past what is shared out on the loop."""

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        inputs = ex.body["input"]  # type: ignore[index]
        self.sent.append(inputs)
        data = [{"object": "embedding", "index": i, "embedding": [0.123456 + i] * 4000}
                for i in range(len(inputs))]
        payload = {"object": "list", "data": data, "model": "e",
                   "usage": {"prompt_tokens": 1000, "total_tokens": 1000}}
        return UpstreamResponse(200, {"content-type": "application/json"}, body_of([orjson.dumps(payload)]))


def work_done(st: AppState) -> float:
    return st.metrics.registry.get_sample_value(
        "gateway_work_total", {"kind": "embeddings_answer", "outcome": "done"}) or 0.0


async def test_a_large_answer_is_shared_out_in_the_work_pool() -> None:
    """The encoding is loaded off the loop before the call; a ~600 KB answer is parsed and its tokens
    shared out in the pool, its vectors stored just after; a small one (control) stays inline."""
    st = make_state(cache={"embeddings": {"batch_window_ms": 0}})
    st.work = WorkPool(threads=1, budget_s=5.0, metrics=st.metrics)
    policy = await factory(st, st.config)
    texts = [f"text {i} " + "word " * i for i in range(30)]
    name = st.tokenizer.encoding_name_for("e")
    assert not st.tokenizer.is_loaded(name)
    big = exchange(st, emb(texts), operation="embeddings")
    out = orjson.loads(await drain(await policy(big, WideEmbeds())))
    assert st.tokenizer.is_loaded(name) and out["usage"]["prompt_tokens"] == 1000
    await until(lambda: len(policy.store.memory) == 30, message="the 30 vectors are stored")
    assert work_done(st) == 1
    found = [await policy.store.get(k) for k in policy_keys(policy, st, texts)]
    tokens = [a.tokens for a in found if a is not None]
    assert len(tokens) == 30 and sum(tokens) == 1000 and tokens == sorted(tokens)  # longer text, more tokens

    small = exchange(st, emb(["x", "yy"]), operation="embeddings")
    await drain(await policy(small, Embeds()))
    assert len(policy.store.memory) == 32 and work_done(st) == 1  # stored at once, on the loop


def policy_keys(policy: Any, st: AppState, texts: list[str]) -> list[Any]:
    ex = exchange(st, emb(texts), operation="embeddings")
    version = policy.keys.version(ex)
    return [input_key(ex, version, params_of(ex.body), t) for t in texts]
