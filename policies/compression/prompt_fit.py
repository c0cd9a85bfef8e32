"""Token budgets: how big a prompt may be, and what output limit a request gets.

Pure functions over the config blocks and the request body, shared by the
compression policy (which must know the output limit the budget policy will
set, since output and prompt share the context window) and the budget policy.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config_model import ModelInfo
from gateway.tokens.tokenizer import normalise_model
from policies.compression.budgets_config import BudgetClass, BudgetsConfig
from policies.compression.config import CompressionConfig

# The output-limit field each operation uses. Chat has two spellings: OpenAI's
# reasoning models refuse ``max_tokens``, and most other OpenAI-compatible
# servers only know ``max_tokens``; so a filled-in limit uses the one the model needs.
OUTPUT_KEYS: Mapping[str, tuple[str, ...]] = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
}
_COMPLETION_TOKENS_MODELS = ("o1", "o3", "o4", "gpt-5")


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptBudget:
    budget: int  # prompt tokens compression fits the request into
    context_window: int | None
    output_reserve: int


def model_info(models: Mapping[str, ModelInfo], *names: str) -> ModelInfo | None:
    """The ``models:`` entry for the first name found, exact, then without a provider/ft prefix."""
    for name in names:
        if name and name in models:
            return models[name]
    for name in names:
        if name and (base := normalise_model(name)) in models:
            return models[base]
    return None


def prompt_budget(
    cfg: CompressionConfig, model: ModelInfo | None, output_reserve: int
) -> PromptBudget | None:
    """``(context_window - output) * target``, or ``max_prompt_tokens`` (never above the
    window minus the output); None when neither is known: such models are left alone."""
    window = model.context_window if model is not None else None
    hard = window - output_reserve if window is not None else None
    if cfg.max_prompt_tokens is not None:
        budget = cfg.max_prompt_tokens if hard is None else min(cfg.max_prompt_tokens, hard)
    elif hard is not None:
        budget = int(hard * cfg.target)
    else:
        return None
    return PromptBudget(budget=max(0, budget), context_window=window, output_reserve=output_reserve)


def requested_output(body: Mapping[str, Any], operation: str) -> int | None:
    """The largest output limit the client set (any spelling of the operation), or None."""
    values = [v for key in OUTPUT_KEYS.get(operation, ()) if type(v := body.get(key)) is int]
    return max(values) if values else None


def output_reserve(requested: int | None, budgets: BudgetsConfig, model: ModelInfo | None) -> int:
    """Output tokens to leave free in the window: the limit the request will carry once
    the budget policy has run (an upper bound when a class may still apply to it)."""
    provider_default = (model.max_output_tokens if model is not None else None) or 0
    if not budgets.enforce:  # shadow mode: the request goes out as the client sent it
        return requested if requested is not None else provider_default
    if requested is None:
        default = budgets.default_max_tokens
        requested = max([provider_default if default is None else default,
                         *(c.max_tokens for c in budgets.classes)])
    if budgets.max_tokens_cap is not None:
        requested = min(requested, budgets.max_tokens_cap)
    return requested


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetDecision:
    """``decision`` is one of pass | filled_default | filled_class | clamped | rejected."""

    decision: str
    updates: Mapping[str, int] = field(default_factory=dict)  # body fields to set
    requested: int | None = None
    cap: int | None = None


def fill_key(operation: str, model: str) -> str:
    if operation != "chat":
        return OUTPUT_KEYS[operation][0]
    return (
        "max_completion_tokens"
        if normalise_model(model).startswith(_COMPLETION_TOKENS_MODELS)
        else "max_tokens"
    )


def decide(body: Mapping[str, Any], operation: str, model: str, cfg: BudgetsConfig,
           chosen_class: Callable[[], BudgetClass | None]) -> BudgetDecision:
    """Fill in a missing output limit (class, else default) or clamp/reject one over the cap."""
    requested = requested_output(body, operation)
    cap = cfg.max_tokens_cap
    if requested is None:
        cls = chosen_class() if cfg.classes else None
        value = cls.max_tokens if cls is not None else cfg.default_max_tokens
        if value is None:
            return BudgetDecision(decision="pass")
        value = min(value, cap) if cap is not None else value
        return BudgetDecision(decision="filled_class" if cls is not None else "filled_default",
                              updates={fill_key(operation, model): value}, cap=cap)
    if cap is None or requested <= cap:
        return BudgetDecision(decision="pass", requested=requested)
    if cfg.on_exceed == "reject":
        return BudgetDecision(decision="rejected", requested=requested, cap=cap)
    keys = [k for k in OUTPUT_KEYS[operation] if type(body.get(k)) is int and body[k] > cap]
    return BudgetDecision(decision="clamped", updates=dict.fromkeys(keys, cap), requested=requested, cap=cap)


def choose_class(classes: list[BudgetClass], patterns: Mapping[str, re.Pattern[str]],
                 prompt_tokens: Callable[[], int], last_user: Callable[[], str]) -> BudgetClass | None:
    """The first class whose every condition holds (prompt size at most N; regex found
    in the last user message). Conditions are evaluated lazily and at most once."""
    tokens: int | None = None
    text: str | None = None
    for cls in classes:
        match = cls.match
        if match.max_prompt_tokens is not None:
            tokens = prompt_tokens() if tokens is None else tokens
            if tokens > match.max_prompt_tokens:
                continue
        if match.regex is not None:
            text = last_user() if text is None else text
            if patterns[match.regex].search(text) is None:
                continue
        return cls
    return None


def last_user_text(body: Mapping[str, Any], operation: str) -> str:
    """The text of the last user message (chat, responses) or the prompt (completions)."""
    if operation == "completions":
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else ""
    items = body.get("messages") if operation == "chat" else body.get("input")
    if isinstance(items, str) and operation == "responses":
        return items
    if not isinstance(items, list):
        return ""
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "user":
            return _text_of(item.get("content"))
    return ""


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
