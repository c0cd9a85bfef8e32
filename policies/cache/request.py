"""Per-request cache facts, computed once and shared by the cache layers via ``ex.state``.

The exact key is taken here, in the outermost cache layer, before compression
or budgets (further in) can change the body; the config version folds in the
settings of those layers instead, so changing them still changes the key.
"""
from __future__ import annotations

import asyncio
from typing import Any

from gateway.config_model import Config
from gateway.exchange import Exchange, StateKey
from policies.cache.config import CacheConfig
from policies.cache.controls import CacheControls, parse_controls
from policies.cache.keys import (
    DEFAULT_KEY_HEADERS,
    CacheKey,
    answer_fields,
    config_version,
    is_deterministic,
    make_key,
    request_context,
)

KEY_ATTR: StateKey[CacheKey] = StateKey("cache.key")
KEY_INLINE_MAX_BYTES = 256 * 1024  # below this, hashing on the loop costs less than a thread hop
CONTROLS_ATTR: StateKey[CacheControls] = StateKey("cache.controls")
ANSWER_OPERATIONS = frozenset({"chat", "completions", "responses"})


def cache_blocks(config: Config) -> list[CacheConfig]:
    """The global cache block and every route's own: a layer whose feature is off in all of them is not
    built at all (nothing to run per request)."""
    return [config.cache, *(r.cache for r in config.routes if r.cache is not None)]


def cache_config(ex: Exchange, default: CacheConfig) -> CacheConfig:
    """The route's cache block (already merged over the global one), else the global one."""
    route = ex.request.route
    cfg = route.cache if route is not None else None
    return cfg if cfg is not None else default


def controls_of(ex: Exchange) -> CacheControls:
    controls = ex.state.get(CONTROLS_ATTR)
    if controls is None:
        controls = parse_controls(ex.request.headers)
        ex.state.set(CONTROLS_ATTR, controls)
    return controls


class KeyMaker:
    """Exact keys for one config; the config version is memoised per (route, upstream).

    The version also folds in the request's context (forwarded query string, answer-changing headers),
    so every key built on it (exact, semantic, embeddings) tells such requests apart."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._versions: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}

    def version(self, ex: Exchange) -> str:
        memo = (ex.request.route_name, ex.target.upstream)
        found = self._versions.get(memo)
        if found is None:
            route = ex.request.route
            upstream = self.config.upstreams.get(ex.target.upstream)
            names = DEFAULT_KEY_HEADERS + tuple(
                h.lower() for h in cache_config(ex, self.config.cache).key_headers
            )
            found = self._versions[memo] = (
                config_version(
                    getattr(upstream, "base_url", ""),
                    getattr(route, "model", None),
                    getattr(route, "compression", None) or self.config.compression,
                    getattr(route, "budgets", None) or self.config.budgets,
                ),
                tuple(dict.fromkeys(names)),
            )
        context = request_context(ex.request.query_string, ex.request.headers, found[1])
        return found[0] if not context else found[0] + ":" + config_version(context)

    def key(self, ex: Exchange) -> CacheKey:
        key = ex.state.get(KEY_ATTR)
        if key is None:
            key = self._make(ex, self.version(ex))
            ex.state.set(KEY_ATTR, key)
        return key

    @staticmethod
    def inline(ex: Exchange) -> bool:
        """Whether :meth:`key` may run on the loop (made already, or a body below the thread hop's cost):
        then the caller takes it without the coroutine of :meth:`key_off_loop`."""
        return len(ex.raw_body) < KEY_INLINE_MAX_BYTES or KEY_ATTR in ex.state

    async def key_off_loop(self, ex: Exchange) -> CacheKey:
        """:meth:`key`, with a large body canonicalised and hashed in a thread (issue 15: megabytes of
        sorting and hashing on the loop stall every tenant)."""
        key = ex.state.get(KEY_ATTR)
        if key is None:
            version = self.version(ex)  # memoised on the loop; only the body's pass moves
            if len(ex.raw_body) < KEY_INLINE_MAX_BYTES:
                key = self._make(ex, version)
            else:
                key = await asyncio.to_thread(self._make, ex, version)
            ex.state.set(KEY_ATTR, key)
        return key

    @staticmethod
    def _make(ex: Exchange, version: str) -> CacheKey:
        body: dict[str, Any] = ex.body or {}
        return make_key(namespace=ex.request.namespace, upstream=ex.target.upstream, model=ex.target.model,
                        operation=ex.request.operation, config_version=version, fields=answer_fields(body))


def deterministic(ex: Exchange) -> bool:
    return ex.body is not None and is_deterministic(ex.body)
