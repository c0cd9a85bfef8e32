"""A list with ``popleft``: for aiohttp's per-connection queues that are short and mostly empty.

A ``collections.deque`` always holds a 64-slot block, ~760 bytes even when empty; an empty list is 56.
aiohttp keeps a few deques per connection for its whole life: the parsed requests waiting for their
handler, a request body's read buffer once the body was read, the record of where each HTTP chunk of a
body ends. On 1,000 idle streams that was ~2 MB (issue 21). Those queues hold a handful of items at a
time, so ``pop(0)`` is as cheap as a deque's ``popleft``. One that can grow long in one read (the upstream
body's record of chunk ends: a 256 KB read of 1-byte chunks is ~40,000 of them, and ``pop(0)`` over those
is quadratic, ~150 ms) is a ``GrowingQueue``: past ``GROW_AT`` items it puts a deque in its place.
"""
from __future__ import annotations

from collections import deque
from typing import Any, TypeVar

T = TypeVar("T")


class SmallQueue(list[T]):
    """``append``, ``popleft``, ``len``, indexing: the part of ``deque`` those queues use."""

    __slots__ = ()

    def popleft(self) -> T:
        return self.pop(0)

    def appendleft(self, item: T) -> None:
        self.insert(0, item)


GROW_AT = 64  # items: pop(0) moves at most this many pointers (~0.1 us), a deque's block is ~760 bytes


class GrowingQueue(SmallQueue[T]):
    """A ``SmallQueue`` standing in an owner's attribute (``owner.<name>``) that puts a ``deque`` with its
    items there once it holds more than ``GROW_AT``: its owner reads the attribute on every use (aiohttp's
    ``StreamReader`` does), so from then on every ``popleft`` is O(1) again."""

    __slots__ = ("_name", "_owner")

    def __init__(self, owner: Any, name: str, items: Any = ()) -> None:
        super().__init__(items)
        self._owner, self._name = owner, name

    def append(self, item: T) -> None:
        super().append(item)
        if len(self) > GROW_AT:
            setattr(self._owner, self._name, deque(self))
