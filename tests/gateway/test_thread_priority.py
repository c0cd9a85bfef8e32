"""Background threads run nicer than the event loop's thread; the process's other threads are untouched."""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.thread_priority import BACKGROUND_NICE, MAX_NICE, lower_this_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_an_executor_thread_runs_nicer_and_the_caller_does_not() -> None:
    before = _nice()
    with ThreadPoolExecutor(1, initializer=lower_this_thread) as pool:
        inside = pool.submit(_nice).result()
    assert inside == min(before + BACKGROUND_NICE, MAX_NICE)
    assert _nice() == before  # control: the calling thread (the event loop's) keeps its priority
    with ThreadPoolExecutor(1) as plain:
        assert plain.submit(_nice).result() == before  # control: without the initializer, no change


def test_the_nice_value_stops_at_the_maximum_and_zero_changes_nothing() -> None:
    def twice() -> tuple[bool, bool, bool, int]:
        first = lower_this_thread(MAX_NICE + 5)
        return first, lower_this_thread(), lower_this_thread(0), _nice()

    with ThreadPoolExecutor(1) as pool:
        first, again, zero, nice = pool.submit(twice).result()
    assert (first, again, zero, nice) == (True, False, False, MAX_NICE)
