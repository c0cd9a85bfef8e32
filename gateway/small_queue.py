"""A list with ``popleft``: for aiohttp's per-connection queues that are short and mostly empty.

A ``collections.deque`` always holds a 64-slot block, ~760 bytes even when empty; an empty list is 56.
aiohttp keeps a few deques per connection for its whole life: the parsed requests waiting for their
handler, a request body's read buffer once the body was read, the record of where each HTTP chunk of a
body ends. On 1,000 idle streams that was ~2 MB (issue 21). Those queues hold a handful of items at a
time (bounded by aiohttp's own limits), so ``pop(0)`` is as cheap as a deque's ``popleft``; a queue
that can grow long (an unread body's chunks) keeps its deque.
"""
from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class SmallQueue(list[T]):
    """``append``, ``popleft``, ``len``, indexing: the part of ``deque`` those queues use."""

    __slots__ = ()

    def popleft(self) -> T:
        return self.pop(0)
