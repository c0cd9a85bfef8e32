"""Per-tool figures for the dashboard's "MCP tools" panel: calls, errors, p50/p95 over the window.

Keys are ``(server, tool label)``: the tool label only takes names from the server's catalog or
config (else ``other``), so the set is bounded; it is capped at ``MAX_KEYS`` all the same, and each
key keeps at most ``MAX_SAMPLES`` recent calls.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

MAX_KEYS = 200
MAX_SAMPLES = 4096
WINDOW_S = 900.0  # the dashboard's window
OK_OUTCOMES = frozenset({"ok", "cached"})
Row = tuple[str, str, int, int, float | None, float | None]  # server, tool, calls, errors, p50_s, p95_s


class ToolStats:
    def __init__(self, clock: Callable[[], float], window_s: float = WINDOW_S) -> None:
        self.clock = clock
        self.window_s = window_s
        self._calls: dict[tuple[str, str], deque[tuple[float, float, bool]]] = {}

    def add(self, server: str, tool: str, seconds: float, outcome: str) -> None:
        key = (server, tool)
        calls = self._calls.get(key)
        if calls is None:
            if len(self._calls) >= MAX_KEYS:
                key = (server, "other")
            calls = self._calls.setdefault(key, deque(maxlen=MAX_SAMPLES))
        calls.append((self.clock(), seconds, outcome not in OK_OUTCOMES))

    def rows(self) -> list[Row]:
        """One row per tool with calls in the window, most calls first."""
        since = self.clock() - self.window_s
        out: list[Row] = []
        for (server, tool), calls in list(self._calls.items()):
            while calls and calls[0][0] < since:
                calls.popleft()
            if not calls:
                del self._calls[(server, tool)]
                continue
            times = sorted(c[1] for c in calls)
            errors = sum(1 for c in calls if c[2])
            out.append((server, tool, len(calls), errors, _rank(times, 0.5), _rank(times, 0.95)))
        return sorted(out, key=lambda r: (-r[2], r[0], r[1]))


def _rank(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
