"""Fit a chat conversation into a token budget: the six steps, in order.

``compress`` is a pure function of the messages, the plan and the counting
function: no I/O, no clock, no state between calls, no mutation of its input.
So the same conversation always compresses to the same bytes (the provider's
prompt cache sees the same prefix), and compressing an already compressed
conversation changes nothing (it fits, and a request that fits is returned
as is).

The steps, stopping as soon as the conversation fits:

1. ``normalise`` system/developer prompts;
2. ``truncate`` oversized tool outputs, except the newest (those of the last
   turn, see ``_truncation_stop``): they are what the next answer is about, so
   they are cut only as a last resort (step 2b below);
3. ``dedupe`` tool outputs identical to an earlier one;
4. + 5. ``prune`` the oldest turns, in prefix-stable blocks with ``stable_prefix``;
2b. ``truncate`` the newest outputs too, oldest first, until it fits;
6. the caller answers ``context_length_exceeded`` when ``Outcome.fits`` is false.

Steps 1-3 are applied whole (every old oversized output, not the first few),
so an old message gets the same rewrite on every request of a conversation.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from policies.compression.meter import Meter
from policies.compression.prune import PruneSpec, prune
from policies.compression.steps import dedupe, normalise, oversized, truncate
from policies.compression.turns import Layout, Message, layout, tool_call_problems

STEPS = ("normalise", "truncate", "dedupe", "prune")  # the ``step`` label of the saving metric


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What to fit into: the budget (prompt tokens) and the knobs of the steps."""

    budget: int
    tool_output_max_tokens: int = 2000
    keep_last_turns: int = 6
    min_saving_tokens: int = 200
    stable_prefix: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """``messages`` is the input list itself when nothing changed."""

    messages: Sequence[Message]
    before: int
    after: int
    fits: bool
    saved: Mapping[str, int] = field(default_factory=dict)  # tokens saved, by step

    @property
    def changed(self) -> bool:
        return self.after != self.before


class CompressionBug(RuntimeError):
    """The output broke tool-call pairing the input had right; the caller must not send it."""


def compress(messages: Sequence[Message], plan: Plan, meter: Meter) -> Outcome:
    """Fit ``messages`` into ``plan.budget`` tokens (see the module docstring).

    The target is ``min(budget, before - min_saving_tokens)``: when a request has
    to be compressed at all, it is compressed by at least ``min_saving_tokens``
    if that is possible, so the next few requests of the conversation fit
    without another rewrite (and another prompt-cache miss). A result between
    that target and the budget is still used: it fits, and sending the request
    over budget is the one thing compression exists to prevent.
    """
    before = meter.total(messages)
    if before <= plan.budget:
        return Outcome(messages=messages, before=before, after=before, fits=True)
    goal = min(plan.budget, before - plan.min_saving_tokens)
    run = _Run(messages=messages, tokens=before, meter=meter)
    run.offer("normalise", normalise(messages))
    base = normalised = run.messages
    shape = layout(base)  # steps 2 and 3 keep every message in place, so this stays true
    if run.tokens > goal:
        old = oversized(base, plan.tool_output_max_tokens, meter.text, stop=_truncation_stop(shape))
        run.offer("truncate", truncate(base, old, plan.tool_output_max_tokens, meter))
        base = run.messages  # pruning restarts from here: dedupe is redone on what it keeps
    if run.tokens > goal:
        run.offer("dedupe", dedupe(run.messages, meter.text))
    if run.tokens > goal:
        pruned = prune(base, shape, _prune_spec(plan, goal), meter, original=normalised)
        if pruned is not None:
            run.offer("prune", pruned)
    if run.tokens > plan.budget:
        _truncate_recent(run, plan)
    if run.messages is not messages:
        _check_pairing(messages, run.messages)
    return Outcome(messages=run.messages, before=before, after=run.tokens, fits=run.tokens <= plan.budget,
                   saved=run.saved)


@dataclass(slots=True, kw_only=True)
class _Run:
    messages: Sequence[Message]
    tokens: int
    meter: Meter
    saved: dict[str, int] = field(default_factory=dict)

    def offer(self, step: str, candidate: Sequence[Message]) -> None:
        """Take ``candidate`` if it is smaller; a step that saves nothing leaves no trace."""
        tokens = self.meter.total(candidate)
        if tokens < self.tokens:
            self.saved[step] = self.saved.get(step, 0) + self.tokens - tokens
            self.messages, self.tokens = candidate, tokens


def _truncate_recent(run: _Run, plan: Plan) -> None:
    """Step 2b, the last resort: cut the newest outputs too, oldest first, until it fits."""
    for i in oversized(run.messages, plan.tool_output_max_tokens, run.meter.text):
        run.offer("truncate", truncate(run.messages, (i,), plan.tool_output_max_tokens, run.meter))
        if run.tokens <= plan.budget:
            return


def _truncation_stop(shape: Layout) -> int:
    """Where the outputs spared by step 2 begin: the last turn, the model call being answered.

    Only the newest outputs are spared, not all of the last ``keep_last_turns``:
    an output is cut once, when the next turn arrives, at the end of the prompt,
    so the prompt before it stays byte-identical (and cached) across requests.
    """
    return shape.turns[-1].start if shape.turns else shape.head_end


def _prune_spec(plan: Plan, goal: int) -> PruneSpec:
    return PruneSpec(goal=goal, budget=plan.budget, keep_last_turns=plan.keep_last_turns,
                     stable_prefix=plan.stable_prefix, min_block=plan.min_saving_tokens,
                     output_cap=plan.tool_output_max_tokens)


def _check_pairing(original: Sequence[Message], result: Sequence[Message]) -> None:
    # O(n), paid only when a request was actually rewritten; a conversation the
    # client already got wrong is passed on and left for the provider to judge.
    if tool_call_problems(result) and not tool_call_problems(original):
        raise CompressionBug("compression would break tool-call pairing")
