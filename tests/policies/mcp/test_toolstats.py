"""The "MCP tools" figures: calls, errors, nearest-rank p50/p95 over the window; bounded keys."""
from __future__ import annotations

from policies.mcp import toolstats
from policies.mcp.toolstats import ToolStats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rows_over_the_window() -> None:
    clock = Clock()
    stats = ToolStats(clock, window_s=60)
    for ms in range(1, 21):
        stats.add("quotes", "get_quote", ms / 1000, "ok")
    stats.add("quotes", "boom", 0.5, "tool_error")
    stats.add("quotes", "boom", 0.1, "cached")
    assert stats.rows() == [("quotes", "get_quote", 20, 0, 0.01, 0.019), ("quotes", "boom", 2, 1, 0.1, 0.5)]
    clock.now += 61  # everything left the window
    assert stats.rows() == []


def test_keys_are_capped() -> None:
    stats = ToolStats(Clock())
    for i in range(toolstats.MAX_KEYS + 5):
        stats.add("s", f"t{i}", 0.1, "ok")
    rows = stats.rows()
    assert len(rows) == toolstats.MAX_KEYS + 1 and ("s", "other", 5, 0, 0.1, 0.1) in rows
