"""Start-up checks of the ``budgets:`` block (global and per route): ``dotted.path: what is wrong``."""
from __future__ import annotations

import re

from gateway.config_model import Config
from policies.compression.budgets_config import BudgetsConfig


def problems(config: Config) -> list[str]:
    """Problems of the global ``budgets:`` block and of each route's merged one."""
    found = _budgets("budgets", config.budgets)
    for i, route in enumerate(config.routes):
        if route.budgets is not None:
            found += _budgets(f"routes[{i}].budgets", route.budgets)
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
