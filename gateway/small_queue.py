"""A list with ``popleft``: for aiohttp's per-connection queues that are short and mostly empty.

A ``collections.deque`` always holds a 64-slot block, ~760 bytes even when empty; an empty list is 56.
aiohttp keeps a few deques per connection for its whole life: the parsed requests waiting for their
handler, a request body's read buffer once the body was read, the record of where each HTTP chunk of a
body ends. On 1,000 idle streams that was ~2 MB (issue 21). Those queues hold a handful of items at a
time, so ``pop(0)`` is as cheap as a deque's ``popleft``. One that can grow long in one read (the upstream
body's record of chunk ends: a 256 KB read of 1-byte chunks is ~40,000 of them, and ``pop(0)`` over those
is quadratic, ~150 ms) is checked by its filler after each read (``outgrow``): past ``GROW_AT`` items a
deque takes its place. (The queue itself once did that, holding its owner: a reference cycle per upstream
answer, its reader freed only by the cyclic collector, issue 21.)
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


def outgrow(owner: Any, name: str) -> None:
    """``owner.<name>``, a ``SmallQueue`` holding more than ``GROW_AT`` items, replaced by a ``deque`` with
    them: its owner reads the attribute on every use (aiohttp's ``StreamReader`` does), so from then on every
    ``popleft`` is O(1) again."""
    queue = getattr(owner, name, None)
    if type(queue) is SmallQueue and len(queue) > GROW_AT:
        setattr(owner, name, deque(queue))
