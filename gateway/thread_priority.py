"""Threads whose work releases the GIL yield a core to the event loop (issue 15).

On a busy host (2 cores shared with the provider's and other processes) the event loop's largest wait
is for a core, not for the GIL. A thread that runs long C code without the GIL (the semantic cache's
ONNX model: ~40-80 ms of a core for a 256-token question) competes with the loop for a core at the same
priority. Started with ``lower_this_thread`` (a ``ThreadPoolExecutor`` initializer), such a thread runs
``BACKGROUND_NICE`` steps nicer than the process: the kernel gives the loop the core first, and the thread
still gets every idle cycle. Not for threads that hold the GIL while they work (the work pool's body
decodes): preempted while holding it, they would keep the loop waiting longer.

Linux applies ``setpriority`` to one thread when given its id; elsewhere (or when refused) nothing changes.
"""
from __future__ import annotations

import os
import threading

BACKGROUND_NICE = 10
MAX_NICE = 19


def lower_this_thread(delta: int = BACKGROUND_NICE) -> bool:
    """Raise the calling thread's nice value by ``delta`` (at most ``MAX_NICE``); True when it changed.
    Raising it needs no privilege; it cannot be lowered back without one."""
    if delta <= 0 or not hasattr(os, "setpriority"):
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        target = min(current + delta, MAX_NICE)
        if target == current:
            return False
        os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError:
        return False
    return True
