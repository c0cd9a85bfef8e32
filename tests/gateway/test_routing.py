"""Routing: first match wins, globs, bounded memo."""
from __future__ import annotations

from gateway.config import parse_config
from gateway.routing import Router


def _router(*patterns: str) -> Router:
    raw = {"upstreams": {"a": {"base_url": "http://a/v1"}, "b": {"base_url": "http://b/v1"}},
           "routes": [{"match": {"model": p}, "upstream": "a" if i % 2 == 0 else "b"}
                      for i, p in enumerate(patterns)]}
    return Router(parse_config(raw, env={}).routes)


def test_first_match_wins_and_globs() -> None:
    """A glob earlier in the list beats an exact name later."""
    router = _router("gpt-4o*", "gpt-4o-mini", "*")
    assert router.resolve("gpt-4o-mini").match.model == "gpt-4o*"  # type: ignore[union-attr]
    assert router.resolve("claude").match.model == "*"  # type: ignore[union-attr]


def test_unknown_model_without_catch_all() -> None:
    """No route matches: None (the handler answers 404 model_not_found)."""
    router = _router("gpt-4o")
    assert router.resolve("gpt-4o") is not None
    assert router.resolve("gpt-4") is None


def test_memo_is_bounded() -> None:
    """Random model names cannot grow the memo without limit."""
    router = _router("*")
    for i in range(10000):
        router.resolve(f"m{i}")
    assert len(router._memo) <= 4096


def test_advertised_models_are_literal_patterns() -> None:
    """Globs are not model ids; literal names are."""
    assert _router("gpt-4o", "x-*", "gpt-4o").advertised_models() == ["gpt-4o"]
