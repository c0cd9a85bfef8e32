"""The marker texts compression leaves behind."""
from __future__ import annotations

from policies.compression import markers


def test_markers_say_what_was_removed_and_how_much() -> None:
    """Each marker names the amount removed (or the call referred to)."""
    assert "1234 tokens" in markers.truncated(1234)
    assert "call_7" in markers.duplicate_of("call_7")
    assert "3 earlier turns (900 tokens)" in markers.omitted_turns(3, 900)
    assert "1 earlier turn (10 tokens) was omitted" in markers.omitted_turns(1, 10)


def test_omitted_marker_role_keeps_alternation() -> None:
    """Before a user message the marker speaks as the assistant, otherwise as the user."""
    assert markers.omitted_message(2, 50, "user")["role"] == "assistant"
    assert markers.omitted_message(2, 50, "assistant")["role"] == "user"
