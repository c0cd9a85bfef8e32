"""Per-request cache facts, computed once and shared by the cache layers via ``ex.attrs``.

The exact key is taken here, in the outermost cache layer, before compression
or budgets (further in) can change the body; the config version folds in the
settings of those layers instead, so changing them still changes the key.
"""
from __future__ import annotations

from typing import Any

from gateway.config_model import Config
from gateway.exchange import Exchange
from policies.cache.config import CacheConfig
from policies.cache.controls import CacheControls, parse_controls
from policies.cache.keys import CacheKey, answer_fields, config_version, is_deterministic, make_key

KEY_ATTR = "cache_key"
CONTROLS_ATTR = "cache_controls"
ANSWER_OPERATIONS = frozenset({"chat", "completions", "responses"})


def cache_config(ex: Exchange, default: CacheConfig) -> CacheConfig:
    """The route's cache block (already merged over the global one), else the global one."""
    route = ex.attrs.get("route")
    cfg = getattr(route, "cache", None)
    return cfg if cfg is not None else default


def controls_of(ex: Exchange) -> CacheControls:
    controls = ex.attrs.get(CONTROLS_ATTR)
    if controls is None:
        controls = ex.attrs[CONTROLS_ATTR] = parse_controls(ex.headers)
    return controls


class KeyMaker:
    """Exact keys for one config; the config version is memoised per (route, upstream)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._versions: dict[tuple[str, str], str] = {}

    def version(self, ex: Exchange) -> str:
        memo = (ex.route_name, ex.upstream)
        found = self._versions.get(memo)
        if found is None:
            route = ex.attrs.get("route")
            upstream = self.config.upstreams.get(ex.upstream)
            found = self._versions[memo] = config_version(
                getattr(upstream, "base_url", ""), getattr(route, "model", None),
                getattr(route, "compression", None) or self.config.compression,
                getattr(route, "budgets", None) or self.config.budgets)
        return found

    def key(self, ex: Exchange) -> CacheKey:
        key: CacheKey | None = ex.attrs.get(KEY_ATTR)
        if key is None:
            body: dict[str, Any] = ex.body or {}
            key = ex.attrs[KEY_ATTR] = make_key(
                namespace=ex.namespace, upstream=ex.upstream, model=ex.upstream_model, operation=ex.operation,
                config_version=self.version(ex), fields=answer_fields(body))
        return key


def deterministic(ex: Exchange) -> bool:
    return ex.body is not None and is_deterministic(ex.body)
