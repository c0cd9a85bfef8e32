"""In-process LRU of cached answers, bounded by entry count and by bytes, with TTLs.

Lookups are a dict probe and a move-to-end: a hit costs microseconds and no
copies (the same ``CachedAnswer`` object, with its memoised SSE rendering, is
handed out). Expired entries are dropped when met; the byte bound counts the
body plus its renderings (``CachedAnswer.size``), re-measured when an entry is
touched, so memoised SSE forms cannot grow past the bound unnoticed. A stream
stored raw is assembled here on its first hit (``CachedAnswer.ready``) and
re-measured at once; one that does not assemble is dropped, counted
(``on_unusable``), and the lookup is a miss.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from policies.cache.entry import CachedAnswer
from policies.cache.keys import CacheKey


@dataclass(slots=True)
class _Slot:
    answer: CachedAnswer
    expires: float
    size: int


class MemoryStore:
    def __init__(self, max_entries: int, max_bytes: int, clock: Callable[[], float]) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._slots: OrderedDict[CacheKey, _Slot] = OrderedDict()
        self.bytes = 0
        self.on_change: Callable[[int, int], None] | None = None  # (entries, bytes), for the gauges
        self.on_unusable: Callable[[], None] | None = None  # an entry dropped at its hit: it did not assemble

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, key: CacheKey) -> tuple[CachedAnswer, float] | None:
        """The answer and its remaining TTL, or None."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        left = slot.expires - self.clock()
        if left <= 0:
            self._drop(key)
            return None
        answer = slot.answer
        if answer.raw is not None and not answer.ready():  # the one check an assembled entry costs
            self._drop(key)
            self.unusable()
            return None
        self._slots.move_to_end(key)
        size = answer.size
        if size != slot.size:
            self.bytes += size - slot.size
            slot.size = size
            self._evict()
        return answer, left

    def unusable(self) -> None:
        """Count an entry that could not be served (it did not assemble, or did not decode)."""
        if self.on_unusable is not None:
            self.on_unusable()

    def set(self, key: CacheKey, answer: CachedAnswer, ttl_s: float) -> None:
        if ttl_s <= 0 or self.max_entries <= 0:
            return
        size = answer.size
        if size > self.max_bytes:
            return
        old = self._slots.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self._slots[key] = _Slot(answer, self.clock() + ttl_s, size)
        self.bytes += size
        self._evict()

    def delete(self, key: CacheKey) -> None:
        self._drop(key)

    def clear(self) -> None:
        self._slots.clear()
        self.bytes = 0
        self._changed()

    def _drop(self, key: CacheKey) -> None:
        slot = self._slots.pop(key, None)
        if slot is not None:
            self.bytes -= slot.size
            self._changed()

    def _evict(self) -> None:
        while self._slots and (len(self._slots) > self.max_entries or self.bytes > self.max_bytes):
            _, slot = self._slots.popitem(last=False)
            self.bytes -= slot.size
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(len(self._slots), self.bytes)
