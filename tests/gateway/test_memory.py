"""Freed heap goes back to the OS after loading; start-up objects leave the collector's generations."""
from __future__ import annotations

import ctypes.util
import gc
import platform

import pytest

from gateway.memory import trim_heap
from gateway.server import settle_memory


@pytest.mark.skipif(platform.system() != "Linux" or "musl" in (ctypes.util.find_library("c") or ""),
                    reason="malloc_trim is glibc's")
def test_trim_heap_runs_glibc_malloc_trim() -> None:
    assert trim_heap() is True


def test_settle_memory_freezes_what_is_alive_at_start_up() -> None:
    threshold = gc.get_threshold()
    gc.unfreeze()
    assert gc.get_freeze_count() == 0  # positive control: nothing frozen before
    try:
        settle_memory()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
