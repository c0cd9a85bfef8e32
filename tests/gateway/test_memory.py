"""Freed heap goes back to the OS after loading; start-up objects leave the collector's generations."""
from __future__ import annotations

import ctypes.util
import gc
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.memory import pin_malloc_thresholds, trim_heap
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


# Frees 40 blocks of 2 MB, each followed by a small block that stays (so the heap cannot shrink from its
# top), and prints how much RSS stayed behind (MB). A freed 4 MB block first raises glibc's dynamic mmap
# threshold above 2 MB, as a large answer freed under load does.
RETAINED = """
import sys
from gateway.memory import pin_malloc_thresholds

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "pinned":
    assert pin_malloc_thresholds({})
first = b"x" * (4 << 20)
del first
before = rss()
big, pins = [], []
for i in range(40):
    big.append(b"y" * (2 << 20))
    pins.append(bytearray(4096))
del big
print(rss() - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or "musl" in (ctypes.util.find_library("c") or ""),
                    reason="mallopt is glibc's")
def test_pinned_thresholds_give_freed_large_blocks_back() -> None:
    def retained(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", RETAINED, mode], check=True, capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parents[2])
        return float(out.stdout.strip())

    assert retained("dynamic") > 40  # the control: glibc's own thresholds keep the freed blocks in the heap
    assert retained("pinned") < 8


def test_glibc_settings_from_the_environment_are_left_alone() -> None:
    assert pin_malloc_thresholds({"MALLOC_MMAP_THRESHOLD_": "131072"}) is False
    assert pin_malloc_thresholds({"MALLOC_TRIM_THRESHOLD_": "0"}) is False
