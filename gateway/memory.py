"""Give freed heap back to the operating system.

CPython frees small objects into its own arenas and large ones with glibc's
``free``, which keeps the pages mapped: after a one-off load (start-up imports,
a tokenizer's encodings, an embedding model) the process keeps its peak RSS.
``malloc_trim(0)`` returns the free pages at the top of and inside glibc's heap.
A no-op where glibc is not the allocator (musl, macOS).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        func = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    func.argtypes = [ctypes.c_size_t]
    func.restype = ctypes.c_int
    trim: Callable[[int], int] = func
    return trim


def trim_heap() -> bool:
    """Return free heap pages to the OS; True when glibc's ``malloc_trim`` ran."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
