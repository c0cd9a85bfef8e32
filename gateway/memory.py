"""Give freed heap back to the operating system.

CPython frees small objects into its own arenas and large ones with glibc's
``free``, which keeps the pages mapped: after a one-off load (start-up imports,
a tokenizer's encodings, an embedding model) the process keeps its peak RSS.
``malloc_trim(0)`` returns the free pages at the top of and inside glibc's heap.

glibc also moves its mmap threshold up to the size of the largest mapped block freed so far
(up to 32 MiB): after one 2 MB answer was freed, every later 2 MB buffer came from the heap and
stayed there. Under load, 30 unread 2 MB streams then left the gateway ~25 MB above its byte caps
(``tests/hardening/test_bounded_work.py``). ``pin_malloc_thresholds`` fixes the thresholds instead:
a block of 1 MiB or more is always its own mapping, returned to the OS when freed, and the heap
keeps up to 8 MiB free at its top (a fixed mmap threshold also fixes the trim threshold, at 128 KiB
by default: a 500 KB body then grew and shrank the heap on every request, twice the CPU).
Both are no-ops where glibc is not the allocator (musl, macOS), and the thresholds are left alone
when the process was started with glibc's own ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20
TRIM_THRESHOLD_BYTES = 8 << 20
_OWN_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@functools.cache
def _libc_function(name: str, *argtypes: type[ctypes._SimpleCData[int]]) -> Callable[..., int] | None:
    try:
        func = getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None
    func.argtypes = list(argtypes)
    func.restype = ctypes.c_int
    found: Callable[..., int] = func
    return found


def _malloc_trim() -> Callable[[int], int] | None:
    return _libc_function("malloc_trim", ctypes.c_size_t)


def pin_malloc_thresholds(environ: dict[str, str] | None = None) -> bool:
    """Fix glibc's mmap and trim thresholds (see the module's docstring); True when they were set."""
    env = os.environ if environ is None else environ
    mallopt = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None or any(name in env for name in _OWN_SETTINGS):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def trim_heap() -> bool:
    """Return free heap pages to the OS; True when glibc's ``malloc_trim`` ran."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
