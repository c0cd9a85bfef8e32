"""Group chat messages into the units compression may keep or drop.

Providers reject a conversation with a ``tool`` message whose call is missing,
or an assistant ``tool_calls`` message whose calls are unanswered (400). So the
pruner never drops single messages: it drops *turns*, and a turn always holds
an assistant message together with the tool answers that follow it.

Layout of a conversation as seen here::

    head   = everything up to and including the first user message (the task),
             so the system/developer prompts at the top are in it
    turns  = the rest, each turn being the non-assistant messages (user
             messages, mid-conversation system notes, stray tool messages)
             that precede one assistant message, that assistant message and
             the tool/function answers right after it; trailing messages
             after the last assistant message form a last turn of their own

A chat ``u a u a u`` is turns ``[u a] [u a] [u]``; an agent loop
``u a(tc) t t a(tc) t a`` is head ``u`` and turns ``[a t t] [a t] [a]``: one
turn per model call, which is what "the last N turns" should mean for both.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Message = Mapping[str, Any]

SYSTEM_ROLES = frozenset({"system", "developer"})
ANSWER_ROLES = frozenset({"tool", "function"})


@dataclass(frozen=True, slots=True)
class Turn:
    """Messages ``[start, end)`` of the conversation; ``protected`` turns hold a
    system/developer message and are never dropped."""

    start: int
    end: int
    protected: bool


@dataclass(frozen=True, slots=True)
class Layout:
    head_end: int  # messages[:head_end] are always kept
    turns: tuple[Turn, ...]

    def prunable(self, keep_last_turns: int) -> tuple[Turn, ...]:
        """Turns that may be dropped, oldest first: not protected, not among the last ones."""
        stop = max(0, len(self.turns) - keep_last_turns)
        return tuple(t for t in self.turns[:stop] if not t.protected)


def role_of(message: Message) -> str:
    role = message.get("role")
    return role if isinstance(role, str) else ""


def layout(messages: Sequence[Message]) -> Layout:
    """Split ``messages`` into the head and turns described in the module docstring."""
    head_end = _head_end(messages)
    turns: list[Turn] = []
    start = i = head_end
    n = len(messages)
    while i < n:
        if role_of(messages[i]) != "assistant":
            i += 1
            continue
        i += 1
        while i < n and role_of(messages[i]) in ANSWER_ROLES:
            i += 1
        turns.append(_turn(messages, start, i))
        start = i
    if start < n:
        turns.append(_turn(messages, start, n))
    return Layout(head_end=head_end, turns=tuple(turns))


def _head_end(messages: Sequence[Message]) -> int:
    for i, message in enumerate(messages):
        if role_of(message) == "user":
            return i + 1
    i = 0  # no user message: only the leading system/developer run is the head
    while i < len(messages) and role_of(messages[i]) in SYSTEM_ROLES:
        i += 1
    return i


def _turn(messages: Sequence[Message], start: int, end: int) -> Turn:
    protected = any(role_of(messages[j]) in SYSTEM_ROLES for j in range(start, end))
    return Turn(start=start, end=end, protected=protected)


def call_ids(message: Message) -> list[str]:
    """The ids of an assistant message's tool calls (empty when it has none)."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return []
    return [c["id"] for c in calls if isinstance(c, Mapping) and isinstance(c.get("id"), str)]


def tool_call_problems(messages: Sequence[Message]) -> list[str]:
    """Orphan tool messages and unanswered tool calls, as providers check them.

    A tool message must answer a call of the assistant message that precedes its
    run of tool messages; every call must be answered in that run. Used as a
    guard on the compressor's output and by the tests.
    """
    problems: list[str] = []
    open_ids: set[str] = set()
    for i, message in enumerate(messages):
        role = role_of(message)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_ids:
                problems.append(f"messages[{i}]: tool message answers no open call ({call_id!r})")
            open_ids.discard(call_id)
            continue
        if open_ids:
            problems.append(f"messages[{i}]: calls {sorted(open_ids)} are unanswered")
        open_ids = set(call_ids(message)) if role == "assistant" else set()
    if open_ids:
        problems.append(f"end: calls {sorted(open_ids)} are unanswered")
    return problems
