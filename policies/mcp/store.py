"""TTL stores of the MCP proxy: the catalog cache and the read-only result cache.

Keys always carry the server and the tenant namespace, so nothing crosses tenants.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson


def canonical(value: Any) -> bytes:
    """Arguments in a canonical form: sorted keys, no spaces."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


class TtlStore:
    """A bounded LRU of ``key -> (expires_at, value)``."""

    def __init__(self, clock: Callable[[], float], max_entries: int = 4096) -> None:
        self._clock = clock
        self._max = max_entries
        self._items: OrderedDict[tuple[str, ...], tuple[float, Any]] = OrderedDict()

    def get(self, key: tuple[str, ...]) -> Any:
        found = self._items.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return found[1]

    def put(self, key: tuple[str, ...], value: Any, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        self._items[key] = (self._clock() + ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def drop_prefix(self, prefix: tuple[str, ...]) -> int:
        """Forget every key starting with ``prefix`` (a server's catalogs); how many were dropped."""
        gone = [k for k in self._items if k[:len(prefix)] == prefix]
        for key in gone:
            del self._items[key]
        return len(gone)


def catalog_key(server: str, namespace: str, method: str, params: Any) -> tuple[str, ...]:
    return (server, namespace, method, canonical(params).decode())


def result_key(server: str, namespace: str, tool: str, arguments: Any) -> tuple[str, ...]:
    return (server, namespace, tool, canonical(arguments).decode())
