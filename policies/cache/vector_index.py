"""In-memory vector index for the semantic cache: exact cosine search per namespace.

Vectors are unit length, so one matrix-vector product scores a whole namespace;
up to ~50k entries of 384 floats this is well under a millisecond with numpy,
and exact (no recall lost to an approximate index). Each namespace (tenant +
model + system prompt + tools + earlier turns + parameters, hashed) has its own
matrix, so a search never even sees another tenant's vectors. Freed rows are
zeroed (they score 0, below any threshold) and reused; the global bound evicts
the oldest entries first.

Memory is bounded in bytes too (``max_bytes``: vector, answer, question text and bookkeeping per
entry); an item keeps at most ``TEXT_CHARS`` of its question for the guards, plus the SHA-256
of a longer question, which must then match exactly (issue 15: 1 MB questions were kept whole).
"""
from __future__ import annotations

import builtins
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from policies.cache.entry import CachedAnswer
from policies.cache.guards import TEXT_CHARS, question_digest

INITIAL_ROWS = 16
TOP_K = 4
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
_ENTRY_OVERHEAD = 300  # the Item, its order slot, the digest


@dataclass(slots=True)
class Item:
    answer: CachedAnswer
    text: str  # the question, cut to TEXT_CHARS
    expires: float
    digest: bytes = b""  # sha256 of the whole question when it was longer than TEXT_CHARS

    @property
    def size(self) -> int:
        return self.answer.size + len(self.text) + len(self.digest) + _ENTRY_OVERHEAD


class _Space:
    __slots__ = ("free", "items", "matrix", "used")

    def __init__(self, dim: int) -> None:
        self.matrix = np.zeros((INITIAL_ROWS, dim), dtype=np.float32)
        self.items: list[Item | None] = []
        self.free: list[int] = []
        self.used = 0

    def add(self, vector: np.ndarray, item: Item) -> int:
        if self.free:
            row = self.free.pop()
            self.items[row] = item
        else:
            row = len(self.items)
            if row == self.matrix.shape[0]:
                grown = np.zeros((row * 2, self.matrix.shape[1]), dtype=np.float32)
                grown[:row] = self.matrix
                self.matrix = grown
            self.items.append(item)
        self.matrix[row] = vector
        self.used += 1
        return row

    def remove(self, row: int) -> None:
        if row < len(self.items) and self.items[row] is not None:
            self.items[row] = None
            self.matrix[row] = 0.0
            self.free.append(row)
            self.used -= 1


class VectorIndex:
    def __init__(self, max_entries: int, clock: Callable[[], float],
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._spaces: dict[str, _Space] = {}
        self._order: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._bytes = 0  # entries' sizes plus vectors (matrix rows), kept as entries come and go
        self.on_change: Callable[[int, int], None] | None = None

    def __len__(self) -> int:
        return len(self._order)

    @property
    def bytes(self) -> int:
        return self._bytes

    def candidates(self, namespace: str, vector: np.ndarray) -> Iterator[tuple[float, Item]]:
        """Live entries of ``namespace``, best score first, lazily: ``TOP_K`` at first, then four times
        as many each time the caller wants more (it stops below its threshold). So near-duplicates the
        guards veto (the same question about another order number) never hide the right entry."""
        space = self._spaces.get(namespace)
        if space is None or space.used == 0:
            return
        n = len(space.items)
        scores = space.matrix[:n] @ vector
        now = self.clock()
        done, k = 0, TOP_K
        while done < n:
            k = min(k, n)
            top = np.argpartition(-scores, k - 1)[:k] if n > k else np.arange(n)
            for row in sorted(top, key=lambda r: -scores[r])[done:]:
                item = space.items[row]
                if item is None:
                    continue
                if item.expires <= now:
                    self._remove(namespace, int(row))
                    continue
                yield float(scores[row]), item
            done, k = k, k * 4

    def add(self, namespace: str, vector: np.ndarray, answer: CachedAnswer, text: str, ttl_s: float,
            digest: builtins.bytes | None = None) -> None:
        """``digest``: :func:`question_digest` of ``text`` when the caller has it (computed off the loop)."""
        if ttl_s <= 0 or self.max_entries <= 0:
            return
        space = self._spaces.get(namespace)
        if space is None:
            space = self._spaces[namespace] = _Space(vector.shape[0])
        elif space.matrix.shape[1] != vector.shape[0]:
            return  # another embedder's dimension: never mix vector spaces
        item = Item(answer, text[:TEXT_CHARS], self.clock() + ttl_s,
                    question_digest(text) if digest is None else digest)
        if item.size + vector.nbytes > self.max_bytes:
            return
        row = space.add(vector, item)
        self._bytes += item.size + vector.nbytes
        self._order[(namespace, row)] = None
        while len(self._order) > self.max_entries or self._bytes > self.max_bytes:
            (ns, old), _ = self._order.popitem(last=False)
            self._remove(ns, old, ordered=False)
        self._changed()

    def _remove(self, namespace: str, row: int, ordered: bool = True) -> None:
        space = self._spaces.get(namespace)
        if space is None:
            return
        item = space.items[row] if row < len(space.items) else None
        if item is not None:
            self._bytes -= item.size + space.matrix.shape[1] * space.matrix.itemsize
        space.remove(row)
        if ordered:
            self._order.pop((namespace, row), None)
        if space.used == 0:
            del self._spaces[namespace]
        self._changed()

    def clear(self) -> None:
        self._spaces.clear()
        self._order.clear()
        self._bytes = 0
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(len(self._order), self._bytes)
