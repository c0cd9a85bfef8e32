"""The whole pipeline: order of the steps, stopping when it fits, min_saving, rejection, exact counts."""
from __future__ import annotations

import copy

import pytest

from gateway.tokens.tokenizer import Tokenizer
from policies.compression import engine as engine_module
from policies.compression.engine import CompressionBug, Plan, compress
from policies.compression.meter import tokenizer_meter
from policies.compression.turns import tool_call_problems
from tests.policies.compression.helpers import agent, blob, call, chat, meter, system, tool, user


def test_request_that_fits_is_returned_as_is() -> None:
    """Nothing is changed (same list object) when the request is within the budget."""
    messages = agent(3)
    outcome = compress(messages, Plan(budget=10**6), meter())
    assert outcome.messages is messages and outcome.fits and not outcome.changed and not outcome.saved


def test_stops_after_normalising_when_that_is_enough() -> None:
    """A duplicated system prompt is the first thing to go; nothing else is touched if that suffices."""
    rules = "Always answer in JSON. " * 100
    messages = [system(rules), system(rules), user("hi")]
    before = meter().total(messages)
    outcome = compress(messages, Plan(budget=before - 50, min_saving_tokens=0), meter())
    assert list(outcome.saved) == ["normalise"] and outcome.fits
    assert outcome.messages[1:] == messages[2:]


def test_truncation_spares_the_newest_output_first() -> None:
    """Older oversized outputs are cut first; the newest stays whole when that is enough."""
    messages = agent(8, lines=120)
    before = meter().total(messages)
    plan = Plan(budget=int(before * 0.6), tool_output_max_tokens=500, keep_last_turns=2, stable_prefix=False)
    outcome = compress(messages, plan, meter())
    assert outcome.fits and list(outcome.saved) == ["truncate"]
    assert outcome.messages[-1] is messages[-1]
    assert all("were cut here" in outcome.messages[i]["content"] for i in range(3, len(messages) - 1, 2))


def test_newest_outputs_are_cut_last_oldest_first() -> None:
    """When nothing else helps, the newest outputs are cut in order, only as far as needed."""
    messages = [system("s"), user("task"), call("a", "b"), tool("a", blob(1, 400)), tool("b", blob(2, 400))]
    before = meter().total(messages)
    plan = Plan(budget=before - 2500, tool_output_max_tokens=500, keep_last_turns=6)
    outcome = compress(messages, plan, meter())
    assert outcome.fits and list(outcome.saved) == ["truncate"]
    assert "were cut here" in outcome.messages[3]["content"] and outcome.messages[4] is messages[4]


def test_compression_saves_at_least_min_saving_when_it_can() -> None:
    """Just over the budget, the request is still cut by min_saving_tokens, so the next ones fit too."""
    messages = chat(30)
    before = meter().total(messages)
    outcome = compress(messages, Plan(budget=before - 10, min_saving_tokens=600, keep_last_turns=2), meter())
    assert outcome.fits and outcome.before - outcome.after >= 600


def test_unfittable_request_is_reported_with_counts() -> None:
    """When even the head and the last turns are over the budget, the outcome does not fit."""
    messages = [system("s"), user("x " * 4000), call("a"), tool("a", "ok")]
    outcome = compress(messages, Plan(budget=500), meter())
    assert not outcome.fits and outcome.after > 500 and outcome.before >= outcome.after


def test_deterministic_and_input_untouched() -> None:
    """Same input, same output; the caller's messages are never mutated."""
    messages = agent(12, lines=60) + [user("next?")]
    pristine = copy.deepcopy(messages)
    plan = Plan(budget=meter().total(messages) // 3, tool_output_max_tokens=200, keep_last_turns=2)
    first = compress(messages, plan, meter())
    second = compress(copy.deepcopy(messages), plan, meter())
    assert messages == pristine
    assert first.messages == second.messages and first.fits
    assert compress(list(first.messages), plan, meter()).messages == first.messages  # idempotent


def test_broken_pairing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """If a step ever produced an orphan tool message, compress raises instead of returning it."""
    messages = agent(6)
    monkeypatch.setattr(engine_module, "prune", lambda base, *_, **__: list(base[:2]) + list(base[3:]))
    with pytest.raises(CompressionBug):
        compress(messages, Plan(budget=meter().total(messages) // 2, keep_last_turns=1), meter())


def test_counts_are_exact_with_the_real_tokenizer() -> None:
    """Outcome.after equals a fresh tokenizer's count of the compressed request (learned counts included)."""
    tok = Tokenizer()
    messages = agent(15, lines=150) + [user("and the total?")]
    plan = Plan(budget=tok.count_messages("gpt-4o", messages) // 3, keep_last_turns=3)
    outcome = compress(messages, plan, tokenizer_meter(tok, "gpt-4o"))
    assert outcome.fits and set(outcome.saved) >= {"truncate", "prune"}
    assert outcome.after == Tokenizer().count_messages("gpt-4o", list(outcome.messages))
    assert tool_call_problems(outcome.messages) == []
