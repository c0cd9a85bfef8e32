"""The ``budgets`` block: output token budgets by request class."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetClassMatch:
    max_prompt_tokens: int | None = None
    regex: str | None = None  # searched in the last user message

@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetClass:
    match: BudgetClassMatch
    max_tokens: int

@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetsConfig:
    default_max_tokens: int | None = None
    max_tokens_cap: int | None = None
    on_exceed: Literal["clamp", "reject"] = "clamp"
    classes: list[BudgetClass] = field(default_factory=list)
    enforce: bool = True  # false: shadow mode, count what would be done, send the request as is
