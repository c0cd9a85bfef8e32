"""Start-up checks of the ``compression:`` and ``budgets:`` blocks (global and per route).

Types are checked by the config loader; these are the value rules it cannot
express. Problems are reported as ``dotted.path: what is wrong`` lines, like
the loader's, so a bad value fails at start-up and never per request.
"""
from __future__ import annotations

import re

from gateway.config_model import Config
from gateway.config_policies import BudgetsConfig, CompressionConfig


def compression_problems(config: Config) -> list[str]:
    """Problems of the global ``compression:`` block and of each route's merged one."""
    found = _compression("compression", config.compression)
    for i, route in enumerate(config.routes):
        if route.compression is not None:
            found += _compression(f"routes[{i}].compression", route.compression)
    return found


def budget_problems(config: Config) -> list[str]:
    """Problems of the global ``budgets:`` block and of each route's merged one."""
    found = _budgets("budgets", config.budgets)
    for i, route in enumerate(config.routes):
        if route.budgets is not None:
            found += _budgets(f"routes[{i}].budgets", route.budgets)
    return found


def _compression(path: str, cfg: CompressionConfig) -> list[str]:
    found = []
    if not 0 < cfg.target <= 1:
        found.append(f"{path}.target: must be in (0, 1], got {cfg.target}")
    if cfg.max_prompt_tokens is not None and cfg.max_prompt_tokens < 1:
        found.append(f"{path}.max_prompt_tokens: must be >= 1")
    if cfg.tool_output_max_tokens < 64:
        found.append(f"{path}.tool_output_max_tokens: must be >= 64 (room for a head, a tail and the marker)")
    if cfg.keep_last_turns < 1:
        found.append(f"{path}.keep_last_turns: must be >= 1 (the last turn holds the current question)")
    if cfg.min_saving_tokens < 0:
        found.append(f"{path}.min_saving_tokens: must be >= 0")
    return found


def _budgets(path: str, cfg: BudgetsConfig) -> list[str]:
    found = []
    for name in ("default_max_tokens", "max_tokens_cap"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            found.append(f"{path}.{name}: must be >= 1")
    for i, cls in enumerate(cfg.classes):
        where = f"{path}.classes[{i}]"
        if cls.max_tokens < 1:
            found.append(f"{where}.max_tokens: must be >= 1")
        if cls.match.max_prompt_tokens is None and cls.match.regex is None:
            found.append(f"{where}.match: needs max_prompt_tokens or regex")
        if cls.match.regex is not None:
            try:
                re.compile(cls.match.regex)
            except re.error as exc:
                found.append(f"{where}.match.regex: invalid regular expression: {exc}")
    return found
