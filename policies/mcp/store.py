"""TTL stores of the MCP proxy: the catalog cache and the read-only result cache.

Keys always carry the server and the tenant namespace, so nothing crosses tenants. Both are bounded by
entries and by bytes (issue 15): a value counts its JSON size, a key its length (the arguments are
hashed into it: a tool called with a megabyte of arguments keeps 64 characters of them, not the
megabyte). A value larger than a quarter of the store is not kept.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from policies.mcp.config import STORE_MAX_BYTES


def canonical(value: Any) -> bytes:
    """Arguments in a canonical form: sorted keys, no spaces."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


ENTRY_OVERHEAD = 400  # the entry's tuple, key tuple and dict slot, beyond the key's and value's lengths


class TtlStore:
    """A bounded LRU of ``key -> (expires_at, value, size)``, by entries and by bytes."""

    def __init__(self, clock: Callable[[], float], max_entries: int = 4096,
                 max_bytes: int = STORE_MAX_BYTES) -> None:
        self._clock = clock
        self._max = max_entries
        self._max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple[str, ...], tuple[float, Any, int]] = OrderedDict()

    def get(self, key: tuple[str, ...]) -> Any:
        found = self._items.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return found[1]

    def put(self, key: tuple[str, ...], value: Any, ttl_s: float) -> bool:
        """Keep ``value`` for ``ttl_s``; False when it is not kept (no TTL, or too large)."""
        if ttl_s <= 0:
            return False
        size = len(canonical(value)) + sum(map(len, key)) + ENTRY_OVERHEAD
        if size > self._max_bytes // 4:
            return False
        self._drop(key)
        self._items[key] = (self._clock() + ttl_s, value, size)
        self.bytes += size
        while len(self._items) > self._max or self.bytes > self._max_bytes:
            self.bytes -= self._items.popitem(last=False)[1][2]
        return True

    def _drop(self, key: tuple[str, ...]) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[2]

    def drop_prefix(self, prefix: tuple[str, ...]) -> int:
        """Forget every key starting with ``prefix`` (a server's catalogs); how many were dropped."""
        gone = [k for k in self._items if k[:len(prefix)] == prefix]
        for key in gone:
            self._drop(key)
        return len(gone)


def catalog_key(server: str, namespace: str, method: str, params: Any) -> tuple[str, ...]:
    return (server, namespace, method, _digest(params))


def result_key(server: str, namespace: str, tool: str, arguments: Any) -> tuple[str, ...]:
    return (server, namespace, tool, _digest(arguments))


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()
