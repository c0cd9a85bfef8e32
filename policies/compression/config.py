"""The ``compression`` block (global, merged per route)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressionConfig:
    enabled: bool = True
    target: float = 0.8
    max_prompt_tokens: int | None = None
    tool_output_max_tokens: int = 2000
    keep_last_turns: int = 6
    min_saving_tokens: int = 200
    stable_prefix: bool = True
    enforce: bool = True  # false: shadow mode, count what would be done, send the request as is
