"""Step 4 (prune the oldest turns) and step 5 (do it in prefix-stable blocks).

Pruning drops whole turns (see ``turns``), oldest first, never the head (system
prompts and the task), protected turns or the last ``keep_last_turns`` turns,
and puts one marker message where the dropped turns were.

Providers cache prompts by exact prefix. Cutting the minimum each time moves
the cut by a turn on almost every request, so everything after the head misses
the cache on every request. With ``stable_prefix`` the cut may only land on a
grid: the first turn boundary at or after each multiple of ``block`` tokens,
counted from the first prunable turn. The grid depends only on the old turns,
which do not change as the conversation grows, so the next requests pick the
same cut (and produce the same bytes up to their new messages) until the kept
part outgrows the budget again; then the cut jumps by at least a block. The
rule is a pure function of the request: no state is kept between requests.

Candidate cuts are priced with prefix sums (plus the few duplicate outputs
whose dedupe reference changes with the cut), and only the chosen one is built.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.tokens.request import REPLY_PRIMING_TOKENS
from policies.compression import markers
from policies.compression.meter import Meter
from policies.compression.steps import dedupe, dedupe_key
from policies.compression.turns import ANSWER_ROLES, Layout, Message, Turn, role_of

STABLE_BLOCK_FRACTION = 0.25  # of the budget: each jump of the cut frees at least this much


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneSpec:
    goal: int  # prune until the total is at most this ...
    budget: int  # ... or, if the goal cannot be reached, at most this
    keep_last_turns: int
    stable_prefix: bool
    min_block: int = 0  # the block is never smaller than this (min_saving_tokens)
    output_cap: int | None = None  # tool_output_max_tokens: old outputs are measured as if already cut


def prune(messages: Sequence[Message], shape: Layout, spec: PruneSpec, meter: Meter,
          original: Sequence[Message] | None = None) -> list[Message] | None:
    """The pruned (and re-deduplicated) conversation, or None when nothing may be dropped.

    ``messages`` (laid out as ``shape``) must not be deduplicated yet: references
    to outputs in dropped turns would dangle, so dedupe runs on what is kept.
    ``original`` is the same conversation before its tool outputs were cut
    (same layout). Which old outputs are cut changes as the conversation grows
    and the grid must not, so the grid measures each turn on ``original`` with
    its outputs counted as at most ``output_cap``: the size the turn has once
    its outputs are cut, known whether or not they are cut yet. The marker
    counts what the dropped turns really had.
    """
    prunable = shape.prunable(spec.keep_last_turns)
    if not prunable:
        return None
    pricer = _Pricer(messages, shape, prunable, meter, original or messages, spec.output_cap)
    cuts = _grid(pricer.grid_sizes, _block(spec)) if spec.stable_prefix else list(range(1, len(prunable) + 1))
    chosen = len(prunable)
    for limit in (spec.goal, spec.budget):
        found = _smallest_fitting(cuts, limit, pricer)
        if found is not None:
            chosen = found
            break
    return dedupe(pricer.build(chosen), meter.text)


def _block(spec: PruneSpec) -> int:
    return max(1, spec.min_block, int(spec.budget * STABLE_BLOCK_FRACTION))


def _grid(sizes: Sequence[int], block: int) -> list[int]:
    """Cuts (numbers of turns to drop) where the dropped size first crosses each multiple of ``block``.

    Dropping everything prunable is always a candidate too: it is the last resort.
    """
    cuts: list[int] = []
    dropped = 0
    for i, size in enumerate(sizes):
        before = dropped // block
        dropped += size
        if dropped // block > before:
            cuts.append(i + 1)
    if not cuts or cuts[-1] != len(sizes):
        cuts.append(len(sizes))
    return cuts


def _smallest_fitting(cuts: Sequence[int], limit: int, pricer: _Pricer) -> int | None:
    """Binary search: the total falls as more turns are dropped (a dropped output
    that a later duplicate referred to is paid once either way)."""
    lo, hi = 0, len(cuts) - 1
    found: int | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        if pricer.total(cuts[mid]) <= limit:
            found, hi = cuts[mid], mid - 1
        else:
            lo = mid + 1
    return found


class _Pricer:
    """Prices "drop the first ``cut`` prunable turns" without building the conversation.

    total(cut) = everything - dropped turns + marker + dedupe changes, where the
    dedupe changes come only from groups of identical tool outputs (each kept
    copy after the first kept one is paid as a reference instead).
    """

    __slots__ = ("everything", "grid_sizes", "groups", "messages", "meter", "owner", "prunable", "shape",
                 "starts", "was")

    def __init__(self, messages: Sequence[Message], shape: Layout, prunable: Sequence[Turn], meter: Meter,
                 original: Sequence[Message], output_cap: int | None) -> None:
        self.messages, self.shape, self.prunable, self.meter = messages, shape, prunable, meter
        self.everything = meter.fixed + REPLY_PRIMING_TOKENS + sum(meter.cost(m) for m in messages)
        self.starts = _running([meter.span(messages, t.start, t.end) for t in prunable])
        self.was = _running([meter.span(original, t.start, t.end) for t in prunable])  # before any cut
        cap = output_cap if output_cap is not None else 1 << 62
        self.grid_sizes = [sum(min(meter.cost(m), cap) if role_of(m) in ANSWER_ROLES else meter.cost(m)
                               for m in original[t.start: t.end]) for t in prunable]
        self.owner: dict[int, int] = {}  # message index -> ordinal of its prunable turn
        for ordinal, turn in enumerate(prunable):
            for i in range(turn.start, turn.end):
                self.owner[i] = ordinal
        self.groups = _duplicate_groups(messages)

    def total(self, cut: int) -> int:
        marker = self.meter.cost(self.marker(cut))
        return self.everything - self.starts[cut] + marker + self._dedupe_delta(cut)

    def marker(self, cut: int) -> Message:
        gone = {t.start for t in self.prunable[:cut]}
        next_role = next((role_of(self.messages[t.start]) for t in self.shape.turns
                          if t.start > self.prunable[0].start and t.start not in gone), "")
        return markers.omitted_message(cut, self.was[cut], next_role)

    def _dedupe_delta(self, cut: int) -> int:
        delta = 0
        for content, members in self.groups:
            kept = [i for i in members if self.owner.get(i, cut) >= cut]
            if len(kept) < 2:
                continue
            reference = markers.duplicate_of(self.messages[kept[0]]["tool_call_id"])
            saving = self.meter.text(content) - self.meter.text(reference)
            if saving > 0:
                delta -= saving * (len(kept) - 1)
        return delta

    def build(self, cut: int) -> list[Message]:
        """The conversation without the first ``cut`` prunable turns, the marker in their place."""
        out = list(self.messages[: self.shape.head_end])
        gone = {t.start for t in self.prunable[:cut]}
        marked = False
        for turn in self.shape.turns:
            if turn.start not in gone:
                out.extend(self.messages[turn.start: turn.end])
            elif not marked:
                marked = True
                out.append(self.marker(cut))
        return out


def _running(sizes: Sequence[int]) -> list[int]:
    """Prefix sums: ``out[k]`` is the size of the first ``k`` turns."""
    out = [0]
    for size in sizes:
        out.append(out[-1] + size)
    return out


def _duplicate_groups(messages: Sequence[Message]) -> list[tuple[str, list[int]]]:
    """Tool outputs that dedupe would consider, grouped by content, groups of two or more."""
    by_content: dict[str, list[int]] = {}
    for i, message in enumerate(messages):
        key = dedupe_key(message)
        if key is not None:
            by_content.setdefault(key, []).append(i)
    return [(content, members) for content, members in by_content.items() if len(members) > 1]
