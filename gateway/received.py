"""A large request body received into one buffer whose pages were touched off the loop (issue 15).

aiohttp's parser hands the handler each received piece (~256 KB) as a new bytes object, and the handler
must keep them all until the body is whole: 4 x 5 MB bodies arriving together grew the heap by 21 MB of
fresh pages, ~5,000 page faults taken on the event loop (a few us each on a VM; the loop's system time
was most of the bystander's slowest calls in `bench/results/2026-12-07-attacks.md`). With a declared
length, the body instead goes into one anonymous mapping of that size whose pages a pool thread touches
first (``prefault``: ``memset`` through ctypes, without the GIL); each piece is copied in and dropped, so
the next piece reuses its heap memory. The decode job takes the bytes out (one copy, as the join of the
pieces was) and unmaps the buffer.
"""
from __future__ import annotations

import ctypes
import mmap

# Bytes of bodies being received into prefaulted buffers at once, per worker. ``prefault`` makes a body's
# whole declared length resident before its bytes arrive, so a client trickling bodies that declare the
# maximum size would otherwise hold client_max_reading x max_body_bytes (16 x 64 MiB) for a few bytes
# sent; past this budget a body is received in pieces as before (memory grows only as bytes arrive).
PREFAULT_MAX_BYTES = 32 * 1024 * 1024


class ReceiveBudget:
    """The bytes of prefaulted buffers still receiving (one per worker, used on the event loop only)."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int = PREFAULT_MAX_BYTES) -> None:
        self.limit, self.held = limit, 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


class Received:
    """A body of ``declared`` bytes, filled as it arrives."""

    __slots__ = ("buffer", "size")

    def __init__(self, declared: int) -> None:
        self.buffer = mmap.mmap(-1, declared)  # anonymous, untouched: no page is faulted yet
        self.size = 0

    def add(self, piece: bytes) -> bool:
        """Copy ``piece`` in; False (nothing copied) when it would pass the declared length."""
        end = self.size + len(piece)
        if end > len(self.buffer):
            return False
        self.buffer[self.size:end] = piece
        self.size = end
        return True

    def take(self) -> bytes:
        """The bytes received (a copy) and the buffer unmapped; call once, off the loop for a large body."""
        data = self.buffer[:self.size]
        self.buffer.close()
        return data


def prefault(received: Received) -> bool:
    """Touch every page of the buffer (zeros) in one C call that does not hold the GIL: the loop's copies
    then fault nothing. Nothing may be copied in before it returns (True)."""
    size = len(received.buffer)
    view = (ctypes.c_char * size).from_buffer(received.buffer)
    try:
        ctypes.memset(ctypes.addressof(view), 0, size)
    finally:
        del view  # an exported buffer keeps the mapping from being closed
    return True
