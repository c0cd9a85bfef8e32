"""Budget arithmetic: prompt budgets from models:, output reserves, and the max_tokens decisions."""
from __future__ import annotations

import re

from gateway.config_model import ModelInfo
from policies.compression.budgets_config import BudgetClass, BudgetClassMatch, BudgetsConfig
from policies.compression.config import CompressionConfig
from policies.compression.prompt_fit import (
    choose_class,
    decide,
    fill_key,
    last_user_text,
    model_info,
    output_reserve,
    prompt_budget,
    requested_output,
)

GPT4O = ModelInfo(context_window=128000, max_output_tokens=16384)


def test_budget_is_target_share_of_window_minus_output() -> None:
    """(context_window - max output) * target."""
    assert prompt_budget(CompressionConfig(target=0.8), GPT4O, 4000).budget == int((128000 - 4000) * 0.8)


def test_absolute_budget_never_exceeds_the_window() -> None:
    """max_prompt_tokens applies as is, but never above context_window - output."""
    assert prompt_budget(CompressionConfig(max_prompt_tokens=5000), None, 100).budget == 5000
    assert prompt_budget(CompressionConfig(max_prompt_tokens=500000), GPT4O, 1000).budget == 127000


def test_unknown_window_and_no_absolute_budget_means_no_budget() -> None:
    """Models without a known context window are left alone."""
    assert prompt_budget(CompressionConfig(), None, 0) is None
    assert prompt_budget(CompressionConfig(), ModelInfo(encoding="o200k_base"), 0) is None


def test_model_info_tries_exact_then_base_name() -> None:
    """A provider prefix or a fine-tune name finds the base model's entry."""
    models = {"gpt-4o": GPT4O}
    assert model_info(models, "openai/gpt-4o") is GPT4O
    assert model_info(models, "", "gpt-4o") is GPT4O
    assert model_info(models, "llama") is None


def test_output_reserve_follows_what_the_budget_policy_will_send() -> None:
    """Requested limit (clamped to the cap), else the default or a class, else the model's maximum."""
    plain = BudgetsConfig()
    assert output_reserve(1000, plain, GPT4O) == 1000
    assert output_reserve(None, plain, GPT4O) == 16384
    assert output_reserve(None, plain, None) == 0
    assert output_reserve(None, BudgetsConfig(default_max_tokens=512), GPT4O) == 512
    classes = [BudgetClass(match=BudgetClassMatch(regex="x"), max_tokens=3000)]
    assert output_reserve(None, BudgetsConfig(default_max_tokens=512, classes=classes), GPT4O) == 3000
    assert output_reserve(9000, BudgetsConfig(max_tokens_cap=2000), GPT4O) == 2000
    assert output_reserve(9000, BudgetsConfig(max_tokens_cap=2000, enforce=False), GPT4O) == 9000


def test_requested_output_reads_every_spelling() -> None:
    """Chat has max_tokens and max_completion_tokens; the larger counts; non-integers are ignored."""
    assert requested_output({"max_tokens": 10, "max_completion_tokens": 20}, "chat") == 20
    assert requested_output({"max_output_tokens": 5}, "responses") == 5
    assert requested_output({"max_tokens": "10", "max_completion_tokens": True}, "chat") is None


def none(*_: object) -> None:
    return None


def test_fill_in_default_with_the_right_field() -> None:
    """No limit sent: the default is filled in, in the field the model understands."""
    cfg = BudgetsConfig(default_max_tokens=700)
    assert decide({}, "chat", "gpt-4o", cfg, none).updates == {"max_tokens": 700}
    assert decide({}, "chat", "o3-mini", cfg, none).updates == {"max_completion_tokens": 700}
    assert decide({}, "responses", "gpt-4o", cfg, none).updates == {"max_output_tokens": 700}
    assert decide({}, "chat", "gpt-4o", BudgetsConfig(), none).decision == "pass"
    assert fill_key("completions", "x") == "max_tokens"


def test_default_above_cap_is_filled_at_the_cap() -> None:
    """A default bigger than the cap is clamped when filled in."""
    verdict = decide({}, "chat", "gpt-4o", BudgetsConfig(default_max_tokens=9000, max_tokens_cap=1000), none)
    assert verdict.decision == "filled_default" and verdict.updates == {"max_tokens": 1000}


def test_clamp_or_reject_above_the_cap() -> None:
    """Limits above the cap are lowered (every field over it) or refused with on_exceed: reject."""
    body = {"max_tokens": 5000, "max_completion_tokens": 100}
    clamp = decide(body, "chat", "gpt-4o", BudgetsConfig(max_tokens_cap=1000), none)
    assert clamp.decision == "clamped" and clamp.updates == {"max_tokens": 1000}
    reject = decide(body, "chat", "gpt-4o", BudgetsConfig(max_tokens_cap=1000, on_exceed="reject"), none)
    assert reject.decision == "rejected" and (reject.requested, reject.cap) == (5000, 1000)
    assert (
        decide({"max_tokens": 1000}, "chat", "m", BudgetsConfig(max_tokens_cap=1000), none).decision == "pass"
    )


def test_class_fills_instead_of_default() -> None:
    """A matching class gives its max_tokens when the client sent none."""
    short = BudgetClass(match=BudgetClassMatch(max_prompt_tokens=50), max_tokens=256)
    cfg = BudgetsConfig(default_max_tokens=2000, classes=[short])
    verdict = decide({}, "chat", "gpt-4o", cfg, lambda: short)
    assert verdict.decision == "filled_class" and verdict.updates == {"max_tokens": 256}


def test_choose_class_checks_conditions_lazily_and_in_order() -> None:
    """First class whose conditions all hold; prompt size and text are computed at most once."""
    short = BudgetClass(match=BudgetClassMatch(max_prompt_tokens=50), max_tokens=256)
    analysis = BudgetClass(match=BudgetClassMatch(regex=r"(?i)\banaly[sz]e\b"), max_tokens=4000)
    both = BudgetClass(match=BudgetClassMatch(max_prompt_tokens=10, regex="hi"), max_tokens=5)
    patterns = {"(?i)\\banaly[sz]e\\b": re.compile(r"(?i)\banaly[sz]e\b"), "hi": re.compile("hi")}
    calls: list[str] = []

    def tokens(n: int):  # type: ignore[no-untyped-def]
        return lambda: calls.append("tokens") or n

    def text(t: str):  # type: ignore[no-untyped-def]
        return lambda: calls.append("text") or t

    assert choose_class([both, short, analysis], patterns, tokens(30), text("Analyze this")) is short
    assert calls == ["tokens"]
    assert choose_class([short, analysis], patterns, tokens(900), text("please ANALYSE it")) is analysis
    assert choose_class([short, analysis], patterns, tokens(900), text("hello")) is None


def test_last_user_text_for_each_operation() -> None:
    """The last user message's text (parts joined), the completions prompt, or the responses input."""
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": "image_url"}]}]}
    assert last_user_text(chat, "chat") == "c"
    assert last_user_text({"prompt": "p"}, "completions") == "p"
    assert last_user_text({"input": "i"}, "responses") == "i"
    assert last_user_text({"input": [{"role": "user", "content": "j"}]}, "responses") == "j"
    assert last_user_text({"messages": "junk"}, "chat") == ""
