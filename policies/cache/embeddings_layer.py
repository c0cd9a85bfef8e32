"""Embeddings cache and micro-batching for ``/v1/embeddings``.

Every input is looked up on its own (``policies.cache.embeddings``); only the
unseen ones go upstream, and the answer is reassembled in the caller's order
with usage equal to what the provider would have reported for the whole
request. A request for exactly one unseen input waits up to ``batch_window_ms``
for identical-shaped requests and shares one upstream call with them
(``policies.cache.batcher``). A request with nothing cached and no repeated input
passes through untouched (bytes unchanged) and is stored as it goes by.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from gateway.appstate import AppState
from gateway.body import Observed, OneChunk
from gateway.chain import Next
from gateway.config_model import Config
from gateway.exchange import Exchange, Source, UpstreamResponse, Usage
from policies.cache.batcher import Batcher, Failed
from policies.cache.config import EmbeddingsCacheConfig
from policies.cache.embeddings import (
    Input,
    assemble,
    input_key,
    inputs_of,
    params_of,
    parse_answer,
    split_tokens,
)
from policies.cache.entry import CachedAnswer
from policies.cache.keys import CacheKey, canonical
from policies.cache.memory_store import MemoryStore
from policies.cache.redis_store import AnswerStore
from policies.cache.request import KeyMaker, cache_blocks, cache_config, controls_of
from policies.cache.runtime import CacheRuntime, cache_runtime

JSON = {"content-type": "application/json"}


class EmbeddingsCache:
    name = "embeddings_cache"

    def __init__(self, state: AppState, config: Config, rt: CacheRuntime, store: AnswerStore,
                 batcher: Batcher) -> None:
        self.state = state
        self.config = config
        self.rt = rt
        self.store = store
        self.batcher = batcher
        self.keys = KeyMaker(config)

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        if ex.request.operation != "embeddings" or ex.body is None:
            return await next(ex)
        cfg = cache_config(ex, self.config.cache).embeddings
        items = inputs_of(ex.body) if cfg.enabled else None
        if items is None:
            return await next(ex)
        controls = controls_of(ex)
        if controls.bypass:
            self._result(ex, "bypass")
            return await next(ex)
        params = params_of(ex.body)
        version = self.keys.version(ex)
        keys = [input_key(ex, version, params, item) for item in items]
        found: list[CachedAnswer | None] = (
            await self.store.get_many(keys) if controls.read else [None] * len(keys))
        cached = sum(a is not None for a in found)
        ex.response_headers["x-gateway-cache-inputs"] = f"{cached}/{len(items)}"
        ttl = controls.ttl(cfg.ttl_s) if controls.write else 0.0
        if cached == len(items):
            self._result(ex, "hit")
            saved = sum(a.tokens for a in found if a is not None)
            self.rt.metrics.saved("embeddings", ex.request.model, saved)
            return self._answer(ex, [a.body for a in found if a is not None], saved, source="cache")
        self._result(ex, "miss" if cached == 0 else "partial")
        if len(items) == 1 and cfg.batch_window_ms > 0 and cfg.max_batch > 1:
            return await self._batched(ex, next, cfg, keys[0], items[0], ttl)
        if cached == 0 and len(set(keys)) == len(keys):
            resp = await next(ex)
            return self._observe(ex, resp, keys, items, ttl) if resp.status == 200 else resp
        return await self._partial(ex, next, keys, items, found, ttl)

    async def _batched(self, ex: Exchange, next: Next, cfg: EmbeddingsCacheConfig, key: CacheKey, item: Input,
                       ttl: float) -> UpstreamResponse:
        bkey = (ex.request.namespace, ex.target.upstream, ex.target.model, ex.request.upstream_path,
                self.keys.version(ex), canonical(params_of(ex.body or {})))
        share = await self.batcher.submit(bkey, ex, next, item, cfg.batch_window_ms / 1000, cfg.max_batch,
                                          self._counter(ex))
        if isinstance(share, Failed):
            return UpstreamResponse(status=share.status, headers=dict(share.headers),
                                    body=OneChunk(share.body))
        self._put(key, share.vector, share.tokens, ttl)
        return self._answer(ex, [share.vector], share.tokens)

    async def _partial(self, ex: Exchange, next: Next, keys: list[CacheKey], items: list[Input],
                       found: list[CachedAnswer | None], ttl: float) -> UpstreamResponse:
        todo: dict[CacheKey, Input] = {}
        for key, item, answer in zip(keys, items, found, strict=True):
            if answer is None and key not in todo:
                todo[key] = item
        sub = list(todo.values())
        ex.set_body({**(ex.body or {}), "input": sub})
        self.rt.metrics.batch_size.observe(len(sub))
        resp = await next(ex)
        data = b"".join([chunk async for chunk in resp.body])
        parsed = parse_answer(data, len(sub)) if resp.status == 200 else None
        if parsed is None:
            return UpstreamResponse(status=resp.status, headers=resp.headers, body=OneChunk(data),
                                    upstream=resp.upstream)
        vectors, total = parsed
        fresh: dict[CacheKey, tuple[bytes, int]] = {}
        for key, _item, vector, tokens in zip(todo, sub, vectors, split_tokens(total, sub, self._counter(ex)),
                                             strict=True):
            fresh[key] = (vector, tokens)
            self._put(key, vector, tokens, ttl)
        out: list[bytes] = []
        usage = saved = 0
        for key, answer in zip(keys, found, strict=True):
            if answer is not None:
                out.append(answer.body)
                usage += answer.tokens
                saved += answer.tokens
            else:
                out.append(fresh[key][0])
                usage += fresh[key][1]
        self.rt.metrics.saved("embeddings", ex.request.model, saved)
        return self._answer(ex, out, usage, upstream=resp.upstream)

    def _observe(self, ex: Exchange, resp: UpstreamResponse, keys: list[CacheKey], items: list[Input],
                 ttl: float) -> UpstreamResponse:
        self.rt.metrics.batch_size.observe(len(items))

        chunks: list[bytes] = []

        def on_end(error: BaseException | None) -> None:
            if error is not None:
                return  # a complete answer only
            parsed = parse_answer(b"".join(chunks), len(items))
            if parsed is not None and ttl > 0:
                vectors, total = parsed
                for key, vector, tokens in zip(keys, vectors, split_tokens(total, items, self._counter(ex)),
                                               strict=True):
                    self._put(key, vector, tokens, ttl)

        def keep(chunk: bytes) -> bytes:
            chunks.append(chunk)
            return chunk

        return replace(resp, body=Observed(resp.body, on_chunk=keep, on_end=on_end))

    def _put(self, key: CacheKey, vector: bytes, tokens: int, ttl: float) -> None:
        if ttl > 0:
            answer = CachedAnswer(operation="embedding", body=vector, created=time.time(),
                                  usage=Usage(prompt=tokens))
            self.store.set(key, answer, ttl)

    def _answer(self, ex: Exchange, vectors: list[bytes], tokens: int, upstream: str = "",
                source: Source = "upstream") -> UpstreamResponse:
        ex.record.reported_usage = Usage(prompt=tokens)
        body = OneChunk(assemble(ex.target.model, vectors, tokens))
        return UpstreamResponse(status=200, headers=JSON, body=body, source=source, upstream=upstream)

    def _result(self, ex: Exchange, result: str) -> None:
        ex.record.cache_result = ex.response_headers["x-gateway-cache"] = (
            "miss" if result == "partial" else result
        )
        self.rt.metrics.request("embeddings", result, self.name)

    def _counter(self, ex: Exchange) -> Any:
        tokenizer, model = self.state.tokenizer, ex.target.model
        if tokenizer is None:
            return lambda text: max(1, len(text) // 4)
        return lambda text: tokenizer.count_text(model, text)


def embeddings_parts(state: AppState, config: Config, rt: CacheRuntime) -> tuple[AnswerStore, Batcher]:
    # rt.parts holds one untyped slot per feature; this one is the embeddings store and batcher
    found: tuple[AnswerStore, Batcher] | None = rt.parts.get("embeddings")
    cfg = config.cache.embeddings
    if found is not None:
        found[0].memory.max_entries, found[0].memory.max_bytes = cfg.max_entries, cfg.max_bytes
        return found
    memory = MemoryStore(cfg.max_entries, cfg.max_bytes, state.clock)
    memory.on_change = rt.metrics.gauge_hook("embeddings")
    redis = state.backend  # the fleet's Redis, or the host's (workers)
    store = AnswerStore("embeddings", memory, redis, config.state.key_prefix,
                        on_redis_error=rt.metrics.redis_errors.inc)
    batcher = Batcher(rt.metrics.batch_size.observe)
    state.closers.extend([store.flush, batcher.close])
    rt.parts["embeddings"] = (store, batcher)
    return store, batcher


async def factory(state: AppState, config: Config) -> EmbeddingsCache | None:
    """Built when the embeddings cache is on in the global cache block or in a route's own."""
    if not any(b.embeddings.enabled for b in cache_blocks(config)):
        return None
    rt = cache_runtime(state, config)
    store, batcher = embeddings_parts(state, config, rt)
    return EmbeddingsCache(state, config, rt, store, batcher)
