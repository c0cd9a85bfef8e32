"""How soon the event loop gets the GIL back from a busy worker thread (issue 15).

A thread running Python code (the exact cache assembling a 2 MB streamed answer, compression, a
pool job) keeps the GIL until another thread has waited CPython's switch interval for it: 5 ms by
default. The event loop gives the GIL up on every system call (each socket write, each ``epoll``),
so while such a thread runs, the loop waits up to that long after *each* one, and a bystander's
request, a dozen system calls, waited tens of milliseconds (``python -m bench.gil_switch``: a loop's
ping-pong p99 52 ms at 5 ms, 4-8 ms at 0.5-1 ms, beside one such thread). The gateway asks for
``SWITCH_INTERVAL_S`` instead. It costs nothing while no other thread wants the GIL (the interval
only runs while one waits), and only a little throughput of the busy thread when one does.

Long C calls (orjson's parse of megabytes) are not interrupted by any interval: the work pool runs
those one at a time (``WorkPool.run(holds_gil=True)``).
"""
from __future__ import annotations

import sys

SWITCH_INTERVAL_S = 0.0005


def share_the_gil(interval_s: float = SWITCH_INTERVAL_S) -> float:
    """Set this process's switch interval; returns the previous one."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    return previous
