"""Bytes kept beyond their request, sized to their length.

orjson (3.12 and later) returns ``bytes`` whose allocation is at least 4 KiB and rounded up to a power of
two, whatever the length: ``sys.getsizeof`` reports the length, the allocator keeps the buffer. A
200-byte answer kept in the exact cache held ~4.1 KB of memory, about five times what the cache counted
for it, so the cache's byte bound (``cache.exact.max_bytes``) did not bound its memory. What a store keeps
goes through ``right_sized``: one copy, ~0.2 µs for a small answer. Bytes that live only for one request
(a response written and dropped) need nothing.
"""
from __future__ import annotations


def right_sized(data: bytes) -> bytes:
    """``data`` in an allocation of its own length (a copy: ``bytes(data)`` would return ``data`` itself)."""
    return bytes(memoryview(data))
