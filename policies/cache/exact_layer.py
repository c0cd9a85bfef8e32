"""Exact response cache: an identical request (same tenant, route, model, parameters) gets the stored answer.

Only clean 200 answers are stored (non-stream: a complete JSON answer; stream:
``[DONE]`` seen and no error event), by default only for deterministic requests
(``temperature: 0`` or a ``seed``) and never an answer cut by ``max_tokens``
unless ``cache_truncated``. One canonical form serves both modes (a stream is
stored raw and assembled into it on its first hit: ``CachedAnswer.ready``). Hits spend
no quota and make no upstream call (this layer sits outside rate limiting).
Client controls (``Cache-Control``, ``x-gateway-cache``...) are read once per
request in ``policies.cache.controls``.
"""
from __future__ import annotations

import time
from functools import partial
from typing import Any

from gateway.appstate import AppState
from gateway.chain import Next
from gateway.components import TOOL_CACHE
from gateway.config_model import Config
from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.config import CacheConfig
from policies.cache.controls import mode_allows
from policies.cache.entry import CachedAnswer
from policies.cache.fill import attach_fill, refusal
from policies.cache.fleet_flight import PRE_CLAIM, RELEASE_IF_MINE, claim_life, release_unused
from policies.cache.keys import CacheKey
from policies.cache.request import (
    ANSWER_OPERATIONS,
    KeyMaker,
    cache_blocks,
    cache_config,
    controls_of,
    deterministic,
)
from policies.cache.respond import cached_response
from policies.cache.runtime import CacheRuntime, cache_runtime
from policies.cache.tools_layer import ToolCache

MAX_ENTRY_BYTES = 32 * 1024 * 1024


class ExactCache:
    name = "exact_cache"
    operations = ANSWER_OPERATIONS  # the other operations' chains leave it out (gateway.chain)

    def __init__(self, state: AppState, config: Config, rt: CacheRuntime) -> None:
        self.state = state
        self.config = config
        self.rt = rt
        self.keys = KeyMaker(config)
        # The shared backend when fleet coalescing is on: a miss takes its claim in the lookup's round trip.
        claims = any(b.coalesce.enabled for b in cache_blocks(config))
        self.claims = state.backend if claims else None
        self._release = self.claims.script(RELEASE_IF_MINE) if self.claims is not None else None
        # One process, no shared state: a lookup is a memory read (no claim, no Redis), done inline.
        self._memory_only = self.claims is None and rt.exact.redis is None
        self._refused = partial(state.metrics.decision, self.name)  # an answer the fill could not store
        # A stream stored raw that did not assemble at its first hit (``CachedAnswer.ready``): a miss.
        rt.exact.memory.on_unusable = partial(state.metrics.decision, self.name, "dropped_unassemblable")

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        if ex.request.operation not in ANSWER_OPERATIONS or ex.body is None:
            return await next(ex)
        block = cache_config(ex, self.config.cache)
        cfg = block.exact
        if not cfg.enabled or cfg.mode == "off":
            return await next(ex)
        controls = controls_of(ex)
        read, write = mode_allows(cfg.mode, controls)
        det = deterministic(ex)
        if not (read or write) or (cfg.deterministic_only and not det):
            ex.record.cache_result = ex.response_headers["x-gateway-cache"] = "bypass"
            self.rt.metrics.request("exact", "bypass", self.name)
            return await next(ex)  # no key: a 500 KB agent prompt's canonical dump costs ~1.2 ms of GIL
        keys = self.keys
        key = keys.key(ex) if keys.inline(ex) else await keys.key_off_loop(ex)
        claim = None  # a claiming lookup's Redis key and claim life (the entry's write reuses the key)
        if read:
            answer = self.rt.exact.local(key)
            if answer is None and not self._memory_only:
                claim = self._claim(block, key, controls.read, (read, write), det)
                if claim is None:
                    answer = await self.rt.exact.shared(key)  # ``local`` was read just above
                else:  # awaited here: the reply resumes this frame, none between (``AnswerStore.ask``)
                    try:
                        row = await self.rt.exact.ask(claim[0], self.rt.fleet_owner, claim[1])
                    except Exception:  # noqa: BLE001 - Redis trouble is a miss (``claimed`` counts it)
                        row = None
                    answer = self._claimed(ex, key, claim, row)
            if answer is not None and (controls.max_age_s is None or _age(answer) <= controls.max_age_s):
                self.rt.metrics.request("exact", "hit", self.name)
                self.rt.metrics.saved("exact", ex.request.model, answer.tokens)
                return cached_response(ex, answer, "hit", self.state.clock)
        ex.record.cache_result = ex.response_headers["x-gateway-cache"] = "miss"
        self.rt.metrics.request("exact", "miss", self.name)
        primary = (ex.target.upstream, ex.target.model)
        try:
            resp = await next(ex)
        finally:
            if self.claims is not None:
                self._release_unused(ex)
        if write and ex.record.cache_result in ("miss", "coalesced"):
            ttl = controls.ttl(cfg.ttl_s)
            store = _Store(self, primary, key, ttl, cfg.cache_truncated, claim[0] if claim else None)
            resp = attach_fill(ex, resp, store, min(MAX_ENTRY_BYTES, cfg.max_bytes), self.rt.fills,
                               self._refused)
        return resp

    def _claim(self, block: CacheConfig, key: CacheKey, read: bool, allowed: tuple[bool, bool],
               det: bool) -> tuple[str, int] | None:
        """When this request would take the fleet's coalescing claim (``block``: its cache config): the Redis
        key whose lookup takes it too, and the claim's life in ms. None: a plain lookup."""
        wait_s = 0.0 if self.claims is None or self.rt.exact.redis is None else \
            claim_life(block, read, allowed, det)
        if wait_s <= 0:
            return None
        return self.rt.exact.redis_key(key), int(wait_s * 1000)

    def _claimed(self, ex: Exchange, key: CacheKey, claim: tuple[str, int], row: Any) -> CachedAnswer | None:
        """The lookup's row: the entry, or None (the claim it took, or found held, goes to ``PRE_CLAIM``)."""
        answer, taken = self.rt.exact.claimed(key, claim[0], row, claim[1])
        if taken is not None:
            ex.state.set(PRE_CLAIM, taken)
        return answer

    def _release_unused(self, ex: Exchange) -> None:
        """A claim whose request never reached single flight (a semantic hit, an error) is given back."""
        claim = ex.state.get(PRE_CLAIM)
        if claim is None or claim.used or not claim.won:  # the usual case, without a call
            return
        if self.claims is not None and release_unused(self.claims, self._release, claim, self.rt.fleet_owner):
            self.state.metrics.decision("coalesce", "fleet_claim_unused")


class _Store:
    """The fill's callback for one answer: stored under ``key`` unless refused. A slotted object, not a
    closure: a stream holds it until its end (a closure's function and five cells: ~0.4 KB, this ~0.1 KB)."""

    __slots__ = ("key", "layer", "primary", "rkey", "truncated_ok", "ttl")

    def __init__(self, layer: ExactCache, primary: tuple[str, str], key: CacheKey, ttl: float,
                 truncated_ok: bool, rkey: str | None = None) -> None:
        self.layer, self.primary, self.key = layer, primary, key
        self.ttl, self.truncated_ok, self.rkey = ttl, truncated_ok, rkey

    def __call__(self, ex: Exchange, answer: CachedAnswer, reasons: list[str]) -> None:
        layer = self.layer
        refused = refusal(ex, self.primary, reasons, self.truncated_ok)
        if refused is not None:
            layer.state.metrics.decision(layer.name, refused)
            return
        layer.rt.exact.set(self.key, answer, self.ttl, self.rkey)
        layer.state.metrics.decision(layer.name, "stored")


def _age(answer: CachedAnswer) -> float:
    return time.time() - answer.created


async def factory(state: AppState, config: Config) -> ExactCache | None:
    """Built when the exact cache is on in the global block or in a route's own.

    Always registers the read-only tool routes' cache (``state.components["tool_cache"]``),
    which the tool handler puts outermost in its own chain.
    """
    rt = cache_runtime(state, config)
    state.components.set(TOOL_CACHE, ToolCache(config, rt))
    if not any(b.exact.enabled and b.exact.mode != "off" for b in cache_blocks(config)):
        return None
    return ExactCache(state, config, rt)
