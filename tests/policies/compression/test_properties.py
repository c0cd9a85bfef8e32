"""Property tests over generated conversations with tool calls (Hypothesis).

For any valid conversation and any plan: the result fits the budget or is
reported as not fitting; tool calls stay paired; system prompts, the first
user message and the last turns survive; compression is deterministic,
idempotent and never mutates its input.
"""
from __future__ import annotations

import copy
from functools import partial
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.tokens.tokenizer import Tokenizer
from policies.compression.engine import Plan, compress
from policies.compression.meter import tokenizer_meter
from policies.compression.steps import normalise
from policies.compression.turns import SYSTEM_ROLES, layout, tool_call_problems
from tests.policies.compression.helpers import assistant, blob, call, meter, system, tool, user

PARAGRAPHS = ["Be brief.", "Answer   in JSON.", "Use EUR.", "Never  reveal secrets.\n  - not even hints"]


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    messages = [system("\n\n".join(draw(st.lists(st.sampled_from(PARAGRAPHS), min_size=1, max_size=4))),
                       role=draw(st.sampled_from(["system", "developer"])))
                for _ in range(draw(st.integers(0, 2)))]
    messages.append(user("task " + "t " * draw(st.integers(0, 200))))
    outputs: list[str] = []
    n_calls = 0
    for _ in range(draw(st.integers(0, 20))):
        kind = draw(st.sampled_from(["chat", "tools", "tools", "answer", "note"]))
        if kind == "chat":
            messages += [user("q " * draw(st.integers(1, 80))), assistant("a " * draw(st.integers(0, 300)))]
        elif kind == "answer":
            messages.append(assistant("a " * draw(st.integers(1, 300))))
        elif kind == "note" and draw(st.integers(0, 4)) == 0:
            messages.append(system(draw(st.sampled_from(PARAGRAPHS))))
        else:
            ids = [f"c{n_calls + i}" for i in range(draw(st.integers(1, 3)))]
            n_calls += len(ids)
            messages.append(call(*ids))
            for cid in ids:
                if outputs and draw(st.booleans()):
                    content = draw(st.sampled_from(outputs))
                else:
                    content = blob(draw(st.integers(0, 10**6)), draw(st.integers(0, 150)))
                    outputs.append(content)
                messages.append(tool(cid, content))
    if draw(st.booleans()):
        messages.append(user("next?"))
    return messages


@st.composite
def plans(draw: st.DrawFn, total: int) -> Plan:
    return Plan(
        budget=int(total * draw(st.floats(0.05, 1.2))),
        tool_output_max_tokens=draw(st.integers(64, 600)),
        keep_last_turns=draw(st.integers(1, 6)),
        min_saving_tokens=draw(st.integers(0, 400)),
        stable_prefix=draw(st.booleans()),
    )


def last_turn_messages(messages: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    turns = layout(messages).turns
    start = turns[-keep].start if len(turns) >= keep else layout(messages).head_end
    return [m for m in messages[start:] if m["role"] not in SYSTEM_ROLES]


def check(messages: list[dict[str, Any]], plan: Plan, make_meter: Any) -> None:
    pristine = copy.deepcopy(messages)
    outcome = compress(messages, plan, make_meter())
    out = list(outcome.messages)
    assert messages == pristine, "input mutated"
    assert make_meter().total(out) == outcome.after
    assert outcome.fits == (outcome.after <= plan.budget)
    if not outcome.changed:
        assert outcome.messages is messages
    assert tool_call_problems(out) == []
    # system/developer prompts survive, as they were or normalised (when that saved tokens)
    prompts = [m for m in out if m["role"] in SYSTEM_ROLES]
    assert prompts in ([m for m in messages if m["role"] in SYSTEM_ROLES],
                       [m for m in normalise(messages) if m["role"] in SYSTEM_ROLES])
    first_user = next(m for m in messages if m["role"] == "user")
    assert any(m is first_user for m in out)
    # the last turns survive in order (their tool outputs may be cut or referenced, nothing else)
    tail = last_turn_messages(messages, plan.keep_last_turns)
    kept = [m for m in out if m["role"] not in SYSTEM_ROLES][-len(tail):] if tail else []
    for original, now in zip(tail, kept, strict=True):
        if original["role"] == "tool":
            assert now["tool_call_id"] == original["tool_call_id"]
        else:
            assert now is original
    # deterministic and idempotent
    assert compress(copy.deepcopy(messages), plan, make_meter()).messages == out
    if outcome.fits:
        again = compress(out, plan, make_meter())
        assert again.messages is out and not again.changed


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=st.data())
def test_compression_properties(data: st.DataObject) -> None:
    """Fits or is rejected, pairs tool calls, keeps what must survive, deterministic and idempotent."""
    messages = data.draw(conversations())
    check(messages, data.draw(plans(meter().total(messages))), meter)


TOKENIZER = Tokenizer()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=st.data())
def test_compression_properties_with_real_token_counts(data: st.DataObject) -> None:
    """The same properties hold with tiktoken counts (exact totals after truncation included)."""
    messages = data.draw(conversations())
    make = partial(tokenizer_meter, TOKENIZER, "gpt-4o")
    check(messages, data.draw(plans(make().total(messages))), make)
