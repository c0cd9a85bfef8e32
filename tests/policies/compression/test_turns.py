"""Grouping messages into the head and turns, and the tool-call pairing check."""
from __future__ import annotations

from policies.compression.turns import Turn, call_ids, layout, tool_call_problems
from tests.policies.compression.helpers import assistant, call, chat, system, tool, user


def spans(messages):  # type: ignore[no-untyped-def]
    shape = layout(messages)
    return shape.head_end, [(t.start, t.end) for t in shape.turns]


def test_chat_turns_pair_each_user_message_with_its_answer() -> None:
    """A chat u a u a u is head [sys u], turns [a] [u a] [u]: one turn per model call."""
    messages = [system("s"), user("q1"), assistant("a1"), user("q2"), assistant("a2"), user("q3")]
    assert spans(messages) == (2, [(2, 3), (3, 5), (5, 6)])


def test_agent_turn_holds_the_call_and_all_its_answers() -> None:
    """An assistant tool_calls message and the tool messages after it are one turn."""
    messages = [
        system("s"),
        user("task"),
        call("a", "b"),
        tool("a", "x"),
        tool("b", "y"),
        call("c"),
        tool("c", "z"),
        assistant("done"),
    ]
    assert spans(messages) == (2, [(2, 5), (5, 7), (7, 8)])


def test_head_without_user_message_is_the_leading_system_run() -> None:
    """Without a user message only the system/developer prompts at the top are kept as the head."""
    messages = [system("s"), system("d", role="developer"), assistant("hello"), assistant("again")]
    assert spans(messages) == (2, [(2, 3), (3, 4)])


def test_mid_conversation_system_message_protects_its_turn() -> None:
    """A turn holding a system or developer message is never prunable."""
    messages = [system("s"), user("t"), assistant("a"), system("note"), user("q"), assistant("b"), user("q2")]
    shape = layout(messages)
    assert [t.protected for t in shape.turns] == [False, True, False]
    assert shape.prunable(1) == (Turn(2, 3, False),)


def test_prunable_excludes_the_last_turns() -> None:
    """The last keep_last_turns turns are never offered for pruning."""
    shape = layout(chat(5))
    assert len(shape.turns) == 6  # turns: [a] [u a]x4 [u]
    assert len(shape.prunable(2)) == len(shape.turns) - 2
    assert shape.prunable(10) == ()


def test_pairing_check_accepts_a_valid_agent_conversation() -> None:
    """Calls answered right after their assistant message are fine."""
    assert (
        tool_call_problems([user("t"), call("a", "b"), tool("b", "1"), tool("a", "2"), assistant("ok")]) == []
    )


def test_pairing_check_finds_orphans_and_unanswered_calls() -> None:
    """A tool message without its call, and a call without its answer, are both reported."""
    assert tool_call_problems([user("t"), tool("x", "1")])
    assert tool_call_problems([user("t"), call("a", "b"), tool("a", "1"), user("next")])
    assert tool_call_problems([user("t"), call("a")])


def test_call_ids_ignores_malformed_calls() -> None:
    """Only calls with a string id count."""
    assert call_ids({"role": "assistant", "tool_calls": [{"id": "a"}, {"x": 1}, "junk"]}) == ["a"]
    assert call_ids({"role": "assistant", "tool_calls": None}) == []
