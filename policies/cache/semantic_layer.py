"""Semantic cache: a question that means the same as one answered before gets that answer.

Opt-in (``cache.semantic.enabled``). The lookup is narrowed first to an exact
namespace (tenant, upstream, model, system prompt, tools, earlier turns,
parameters: ``policies.cache.semantic_key``); only inside it is the last user
message embedded and compared by cosine with ``threshold``, and a candidate
must also pass ``policies.cache.guards`` (same numbers, negations, names, not a
reordering). The threshold comes from config only: no request can lower it.
Tool turns are skipped by default. When the embedder cannot run, the request
is served as a miss and counted (``result="error"``), never failed.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from gateway.appstate import AppState
from gateway.chain import Next
from gateway.config_model import Config
from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.config import SemanticCacheConfig
from policies.cache.controls import mode_allows
from policies.cache.entry import CachedAnswer
from policies.cache.fill import attach_fill, refusal
from policies.cache.guards import TEXT_CHARS, compatible, question_digest
from policies.cache.request import (
    ANSWER_OPERATIONS,
    KEY_INLINE_MAX_BYTES,
    KeyMaker,
    cache_config,
    controls_of,
)
from policies.cache.respond import cached_response
from policies.cache.runtime import CacheRuntime, cache_runtime
from policies.cache.semantic_key import semantic_namespace, split_question

if TYPE_CHECKING:
    from policies.cache.embedder import MemoEmbedder
    from policies.cache.shared_vectors import SharedVectors
    from policies.cache.vector_index import VectorIndex

log = logging.getLogger("gateway.cache")
MAX_ENTRY_BYTES = 8 * 1024 * 1024


class SemanticParts:
    """The embedder and index of one process (replaced if the embedder changes)."""

    def __init__(self, spec: str, embedder: MemoEmbedder, index: VectorIndex,
                 shared: SharedVectors | None = None) -> None:
        self.spec = spec
        self.embedder = embedder
        self.index = index
        self.shared = shared  # the replicas' index in Redis (state backend), behind the local one
        self.failed_logged = False


class SemanticCache:
    name = "semantic_cache"
    operations = ANSWER_OPERATIONS  # the other operations' chains leave it out (gateway.chain)

    def __init__(self, state: AppState, config: Config, rt: CacheRuntime, parts: SemanticParts) -> None:
        self.state = state
        self.config = config
        self.rt = rt
        self.parts = parts
        self.keys = KeyMaker(config)
        self._refused = partial(state.metrics.decision, self.name)  # an answer the fill could not store

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        if ex.request.operation not in ANSWER_OPERATIONS or ex.body is None:
            return await next(ex)
        cache = cache_config(ex, self.config.cache)
        cfg = cache.semantic
        if not cfg.enabled or cfg.mode == "off":
            return await next(ex)
        controls = controls_of(ex)
        read, write = mode_allows(cfg.mode, controls)
        split = split_question(ex.request.operation, ex.body, cfg.skip_tool_turns) if read or write else None
        if split is None:
            self.state.metrics.decision(self.name, "skip")
            return await next(ex)
        question, fields = split
        digest = await _digest(question)
        namespace = await self._namespace(ex, question, fields)
        if namespace is None:
            self.state.metrics.decision(self.name, "skip_busy")
            return await next(ex)
        vector = await self._vector(question, digest)
        if vector is None:
            self.rt.metrics.request("semantic", "error", self.name)
            return await next(ex)
        if read:
            local = self.parts.index.candidates(namespace, vector)
            hit = self._lookup(local, question, digest, cfg, controls.max_age_s)
            if hit is None and self.parts.shared is not None:  # the other replicas' entries
                found = await self.parts.shared.candidates(namespace, vector)
                hit = self._lookup(iter(found), question, digest, cfg, controls.max_age_s)
            if hit is not None:
                self.rt.metrics.request("semantic", "hit", self.name)
                self.rt.metrics.saved("semantic", ex.request.model, hit.tokens)
                return cached_response(ex, hit, "semantic-hit", self.state.clock)
        ex.record.cache_result = ex.response_headers["x-gateway-cache"] = "miss"
        self.rt.metrics.request("semantic", "miss", self.name)
        primary = (ex.target.upstream, ex.target.model)
        resp = await next(ex)
        if write and ex.record.cache_result in ("miss", "coalesced"):
            store = self._storer(namespace, vector, question, digest, controls.ttl(cfg.ttl_s))
            resp = attach_fill(
                ex,
                resp,
                partial(self._guarded, primary, cache.exact.cache_truncated, store),
                MAX_ENTRY_BYTES,
                self.rt.fills,
                self._refused,
            )
        return resp

    def _guarded(
        self,
        primary: tuple[str, str],
        truncated_ok: bool,
        store: Callable[[CachedAnswer, list[str]], None],
        ex: Exchange,
        answer: CachedAnswer,
        reasons: list[str],
    ) -> None:
        refused = refusal(ex, primary, reasons, truncated_ok)
        if refused is not None:
            self.state.metrics.decision(self.name, refused)
            return
        store(answer, reasons)

    async def _namespace(self, ex: Exchange, question: str, fields: dict[str, Any]) -> str | None:
        """``semantic_namespace``; in the work pool when the body less its question is large (fair per
        tenant; its turns are dumped one by one there, so the GIL comes back to the loop between them).
        None: the pool is busy for this tenant (past its queue or the budget)."""
        version = self.keys.version(ex)  # memoised on the loop; only the body's pass moves
        if len(ex.raw_body) - len(question) < KEY_INLINE_MAX_BYTES:
            return semantic_namespace(ex, version, fields)
        made: Callable[[], str | None] = partial(semantic_namespace, ex, version, fields)
        return await self.state.work.run(ex.request.namespace, "semantic_namespace", made, _no_namespace,
                                         holds_gil=True)

    async def _vector(self, question: str, digest: bytes) -> Any:
        """The question's vector (None: a miss). A long one (it has a ``digest``) can hit only the very
        same question, so its vector is drawn from its digest (``embedder.digest_vector``), not the model's:
        the model runs only while no vector gave their length yet (issue 15: the 4 MB question)."""
        from policies.cache.embedder import digest_vector

        dimension = self.parts.embedder.dimension
        if not digest or dimension is None:
            vector = await self._embed(question)
            if vector is None or not digest:
                return vector
            dimension = vector.shape[0]
        else:
            self.state.metrics.decision(self.name, "embed_skipped_long")
        return digest_vector(digest, dimension)

    async def _embed(self, question: str) -> Any:
        try:
            return await self.parts.embedder.embed_one(question)
        except TimeoutError:  # the embedder's EmbedTimeout
            self.state.metrics.decision(self.name, "embed_timeout")  # a miss, not a wait
            return None
        except Exception as exc:  # noqa: BLE001 - EmbedderUnavailable, or a broken model: a miss, logged once
            if not self.parts.failed_logged:
                self.parts.failed_logged = True
                log.error("semantic cache embedder unavailable: %s", exc)
            return None

    def _lookup(
        self, candidates: Iterator[tuple[float, Any]], question: str, digest: bytes, cfg: SemanticCacheConfig,
        max_age_s: float | None
    ) -> CachedAnswer | None:
        best = 0.0
        found: CachedAnswer | None = None
        for score, item in candidates:
            best = max(best, score)
            if score < cfg.threshold:
                break
            if max_age_s is not None and time.time() - item.answer.created > max_age_s:
                continue
            if compatible(question[:TEXT_CHARS], item.text) and item.digest == digest:
                found = item.answer
                break
            self.state.metrics.decision(self.name, "vetoed_by_guard")
        self.rt.metrics.similarity.observe(best)
        return found

    def _storer(self, namespace: str, vector: Any, question: str, digest: bytes,
                ttl: float) -> Callable[[CachedAnswer, list[str]], None]:
        def store(answer: CachedAnswer, reasons: list[str]) -> None:  # after ``_guarded``'s refusals
            if not answer.ready():  # a stream handed over raw: the index keeps assembled answers only
                self.state.metrics.decision(self.name, "not_stored_incomplete")
                return
            self.parts.index.add(namespace, vector, answer, question, ttl, digest)
            if self.parts.shared is not None:
                self.parts.shared.add(namespace, vector, answer, question, ttl, digest)
            self.state.metrics.decision(self.name, "stored")

        return store


def _no_namespace() -> str | None:
    """The work pool's fallback (busy for this tenant): no namespace, the request skips the cache."""
    return None


DIGEST_INLINE_MAX_CHARS = 256 * 1024  # below this, hashing on the loop costs less than a thread hop


async def _digest(question: str) -> bytes:
    """The question's digest once per request (a long one is hashed in a thread, issue 15)."""
    if len(question) < DIGEST_INLINE_MAX_CHARS:
        return question_digest(question)
    return await asyncio.to_thread(question_digest, question)


def semantic_enabled(config: Config) -> SemanticCacheConfig | None:
    """The semantic block in force somewhere (global or a route), if any."""
    for block in [config.cache, *(r.cache for r in config.routes if r.cache is not None)]:
        if block.semantic.enabled and block.semantic.mode != "off":
            return block.semantic
    return None


def semantic_parts(
    state: AppState, config: Config, rt: CacheRuntime, cfg: SemanticCacheConfig
) -> SemanticParts:
    """Create (or reuse across reloads) the embedder and the index; numpy is imported only here."""
    from policies.cache.embedder import MemoEmbedder, make_embedder
    from policies.cache.shared_vectors import SharedVectors
    from policies.cache.vector_index import VectorIndex

    parts = rt.semantic
    if parts is not None and parts.spec == cfg.embedder:
        parts.index.max_entries, parts.index.max_bytes = cfg.max_entries, cfg.max_bytes
        return parts
    embedder = MemoEmbedder(make_embedder(cfg.embedder, state.upstreams))
    index = VectorIndex(cfg.max_entries, state.clock, cfg.max_bytes)
    index.on_change = rt.metrics.gauge_hook("semantic")
    if parts is not None:
        state.closers.append(parts.embedder.close)
    shared = None
    if state.backend is not None:
        shared = SharedVectors(state.backend, config.state.key_prefix, time.time, rt.metrics.redis_errors.inc)
        state.closers.append(shared.flush)
    parts = rt.semantic = SemanticParts(cfg.embedder, embedder, index, shared)
    state.closers.append(embedder.close)
    return parts


async def factory(state: AppState, config: Config) -> SemanticCache | None:
    cfg = semantic_enabled(config)
    if cfg is None:
        return None
    rt = cache_runtime(state, config)
    return SemanticCache(state, config, rt, semantic_parts(state, config, rt, cfg))
