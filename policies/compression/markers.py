"""The texts compression leaves where it removed something.

The model must be told that content is missing, otherwise it reasons as if it
had seen everything (and may, for instance, re-run a tool whose output was cut
or claim a fact never happened). Every marker says what was removed and how
much. The texts are fixed and depend only on what was removed, so the same
compression of the same conversation yields byte-identical messages: that is
what keeps the provider's prompt cache warm across requests.
"""
from __future__ import annotations

from typing import Any

PREFIX = "[gateway: "


def truncated(cut_tokens: int) -> str:
    """Placed between the head and the tail of a tool output that was too long."""
    return f"\n\n[... gateway: {cut_tokens} tokens of this tool output were cut here ...]\n\n"


def duplicate_of(call_id: str) -> str:
    """Replaces a tool output identical to an earlier one (by its tool_call_id)."""
    return f"{PREFIX}identical to the earlier output of tool call {call_id}; omitted]"


def omitted_turns(turns: int, tokens: int) -> str:
    """Says that (and how much of) the middle of the conversation was dropped."""
    noun = "turn (%d tokens) was" if turns == 1 else "turns (%d tokens) were"
    return f"{PREFIX}{turns} earlier {noun % tokens} omitted here to fit the context window]"


def omitted_message(turns: int, tokens: int, next_role: str) -> dict[str, Any]:
    """The marker message for dropped turns.

    Its role keeps user/assistant alternation where it can: before a kept user
    message it is an assistant message (``user, [marker], user`` would break
    strict-alternation chat templates); before an assistant message it is a
    user message (some providers refuse two assistant messages in a row, and
    all accept two user messages).
    """
    role = "assistant" if next_role == "user" else "user"
    return {"role": role, "content": omitted_turns(turns, tokens)}
