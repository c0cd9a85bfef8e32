"""Model name -> route: first match wins, exact names or globs.

Resolution is memoised because agents use a handful of model names; the memo
is bounded so random model names from clients cannot grow it without limit.
"""
from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from gateway.config_model import RouteConfig

_MEMO_LIMIT = 4096
_GLOB_CHARS = frozenset("*?[")


class Router:
    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self.routes = tuple(routes)
        self._memo: dict[str, RouteConfig | None] = {}

    def resolve(self, model: str) -> RouteConfig | None:
        try:
            return self._memo[model]
        except KeyError:
            pass
        found = next((r for r in self.routes if _matches(r.match.model, model)), None)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[model] = found
        return found

    def advertised_models(self) -> list[str]:
        """Model ids a client may ask for: literal patterns and rewrite targets."""
        names: list[str] = []
        for route in self.routes:
            pattern = route.match.model
            if not _GLOB_CHARS.intersection(pattern) and pattern not in names:
                names.append(pattern)
        return names


def _matches(pattern: str, model: str) -> bool:
    if not _GLOB_CHARS.intersection(pattern):
        return pattern == model
    return fnmatchcase(model, pattern)
