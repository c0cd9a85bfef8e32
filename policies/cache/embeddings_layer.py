"""Embeddings cache and micro-batching for ``/v1/embeddings``.

Every input is looked up on its own (``policies.cache.embeddings``); only the
unseen ones go upstream, and the answer is reassembled in the caller's order
with usage equal to what the provider would have reported for the whole
request. A request for exactly one unseen input waits up to ``batch_window_ms``
for identical-shaped requests and shares one upstream call with them
(``policies.cache.batcher``). A request with nothing cached and no repeated input
passes through untouched (bytes unchanged) and is stored as it goes by.

Bounded work: the provider's total is shared out over the inputs by their token counts. The model's
encoding is loaded off the loop before the call; an answer over 256 KiB (2,048 vectors are tens of MB
of JSON) is parsed and shared out in the work pool, its entries encoded for Redis there too, and
stored just after its relay (over the pool's budget: shared by characters).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from gateway.appstate import AppState
from gateway.body import Observed, OneChunk
from gateway.chain import Next
from gateway.config_model import Config
from gateway.exchange import Exchange, Source, UpstreamResponse, Usage
from gateway.tokens.pool import INLINE_MAX_BYTES
from policies.cache.batcher import Batcher, Failed
from policies.cache.config import EmbeddingsCacheConfig
from policies.cache.embeddings import (
    Input,
    assemble,
    input_key,
    inputs_of,
    params_of,
    rough_count,
    shares,
    text_bytes,
)
from policies.cache.entry import CachedAnswer
from policies.cache.keys import CacheKey, canonical
from policies.cache.memory_store import MemoryStore
from policies.cache.redis_store import AnswerStore
from policies.cache.request import KeyMaker, cache_blocks, cache_config, controls_of
from policies.cache.runtime import CacheRuntime, cache_runtime

JSON = {"content-type": "application/json"}
# An answer up to this size is parsed and shared on the loop; a larger one (2,048 vectors of 1,536
# floats are ~60 MB of JSON) in the work pool, and its entries encoded for Redis there too.
ANSWER_INLINE_MAX_BYTES = 256 * 1024
Shared = tuple[list[bytes], list[int]]


class EmbeddingsCache:
    name = "embeddings_cache"
    operations = frozenset({"embeddings"})  # the other operations' chains leave it out (gateway.chain)

    def __init__(self, state: AppState, config: Config, rt: CacheRuntime, store: AnswerStore,
                 batcher: Batcher) -> None:
        self.state = state
        self.config = config
        self.rt = rt
        self.store = store
        self.batcher = batcher
        self.keys = KeyMaker(config)
        self._storing: set[asyncio.Task[None]] = set()  # large answers being stored after their relay

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
        batched = len(items) == 1 and cfg.batch_window_ms > 0 and cfg.max_batch > 1
        if batched or len(items) > 1:  # the answer's tokens will be shared out by token counts
            await self._encoding_loaded(ex)
        if batched:
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
                                          partial(self._shares, ex))
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
        parsed = await self._shares(ex, data, sub) if resp.status == 200 else None
        if parsed is None:
            return UpstreamResponse(status=resp.status, headers=resp.headers, body=OneChunk(data),
                                    upstream=resp.upstream)
        fresh = dict(zip(todo, zip(*parsed, strict=True), strict=True))
        await self._put_all(ex, list(todo), parsed, ttl)
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
            if error is not None or ttl <= 0:
                return  # a complete answer only
            data = b"".join(chunks)
            if self._inline(ex, data, items):
                parsed = shares(data, items, self._counter(ex))
                if parsed is not None:
                    for key, vector, tokens in zip(keys, *parsed, strict=True):
                        self._put(key, vector, tokens, ttl)
                return
            task = asyncio.get_running_loop().create_task(self._store_later(ex, data, keys, items, ttl))
            self._storing.add(task)
            task.add_done_callback(self._storing.discard)

        def keep(chunk: bytes) -> bytes:
            chunks.append(chunk)
            return chunk

        return resp.with_body(Observed(resp.body, on_chunk=keep, on_end=on_end))

    async def _encoding_loaded(self, ex: Exchange) -> None:
        """The answer's tokens are shared out by each input's token count: the model's encoding is
        loaded now, off the loop (once per process), not by the first share on the loop."""
        tokenizer = self.state.tokenizer
        if tokenizer is not None:
            name = tokenizer.encoding_name_for(ex.target.model)
            if not tokenizer.is_loaded(name):
                await self.state.work.once(name, partial(tokenizer.encoding, name))

    def _inline(self, ex: Exchange, data: bytes, items: Sequence[Input]) -> bool:
        """Whether sharing this answer out is cheap enough for the loop (small, encoding loaded)."""
        if len(data) > ANSWER_INLINE_MAX_BYTES:
            return False
        if len(items) < 2:
            return True  # nothing to share out: no count
        tokenizer = self.state.tokenizer
        return text_bytes(items) <= INLINE_MAX_BYTES and \
            (tokenizer is None or tokenizer.is_loaded(tokenizer.encoding_name_for(ex.target.model)))

    async def _shares(self, ex: Exchange, data: bytes, items: list[Input]) -> Shared | None:
        """The answer's vectors and each input's token share: inline when cheap, else in the work pool
        (the encoding was loaded before the call); over the pool's budget, shared by characters instead."""
        if self._inline(ex, data, items):
            return shares(data, items, self._counter(ex))
        return await self.state.work.run(ex.request.namespace, "embeddings_answer",
                                         partial(shares, data, items, self._counter(ex)),
                                         partial(shares, data, items, rough_count))

    async def _store_later(self, ex: Exchange, data: bytes, keys: list[CacheKey], items: list[Input],
                           ttl: float) -> None:
        parsed = await self._shares(ex, data, items)
        if parsed is not None:
            await self._put_all(ex, keys, parsed, ttl)

    async def _put_all(self, ex: Exchange, keys: list[CacheKey], parsed: Shared, ttl: float) -> None:
        """Store fresh vectors; with Redis, a large batch's entries are encoded in the work pool."""
        if ttl <= 0:
            return
        answers = [self._entry(vector, tokens) for vector, tokens in zip(*parsed, strict=True)]
        if self.store.redis is not None and sum(len(v) for v in parsed[0]) > ANSWER_INLINE_MAX_BYTES:
            await self.state.work.run(ex.request.namespace, "embeddings_answer",
                                      partial(_encode_ahead, answers), lambda: None)
        for key, answer in zip(keys, answers, strict=True):
            self.store.set(key, answer, ttl)

    def _put(self, key: CacheKey, vector: bytes, tokens: int, ttl: float) -> None:
        if ttl > 0:
            self.store.set(key, self._entry(vector, tokens), ttl)

    @staticmethod
    def _entry(vector: bytes, tokens: int) -> CachedAnswer:
        return CachedAnswer(operation="embedding", body=vector, created=time.time(),
                            usage=Usage(prompt=tokens))

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


def _encode_ahead(answers: list[CachedAnswer]) -> None:
    """In the work pool: each entry's Redis form, taken by ``AnswerStore.set`` on the loop."""
    for answer in answers:
        answer.encoded = answer.encode()


def embeddings_parts(state: AppState, config: Config, rt: CacheRuntime) -> tuple[AnswerStore, Batcher]:
    found = rt.embeddings
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
    rt.embeddings = (store, batcher)
    return store, batcher


async def factory(state: AppState, config: Config) -> EmbeddingsCache | None:
    """Built when the embeddings cache is on in the global cache block or in a route's own."""
    if not any(b.embeddings.enabled for b in cache_blocks(config)):
        return None
    rt = cache_runtime(state, config)
    store, batcher = embeddings_parts(state, config, rt)
    return EmbeddingsCache(state, config, rt, store, batcher)
