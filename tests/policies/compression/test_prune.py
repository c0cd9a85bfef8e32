"""Steps 4-5: pruning whole turns, the marker, dedupe after the cut, and the prefix-stable grid."""
from __future__ import annotations

from policies.compression import markers
from policies.compression.prune import PruneSpec, _grid, _Pricer, prune
from policies.compression.steps import dedupe
from policies.compression.turns import layout, tool_call_problems
from tests.policies.compression.helpers import agent, blob, call, chat, meter, system, tool, user


def spec(budget: int, keep: int = 2, stable: bool = False) -> PruneSpec:
    return PruneSpec(goal=budget, budget=budget, keep_last_turns=keep, stable_prefix=stable)


def test_prune_drops_oldest_turns_and_marks_the_gap() -> None:
    """Head and last turns stay; a marker with the count of dropped turns and tokens replaces the rest."""
    messages = agent(10, lines=10)
    m = meter()
    out = prune(messages, layout(messages), spec(m.total(messages) // 2), m)
    assert out is not None
    assert out[:2] == messages[:2] and out[-4:] == messages[-4:]
    assert m.total(out) <= m.total(messages) // 2
    marker = out[2]
    # next kept message is an assistant
    assert marker["role"] == "user" and "earlier turns" in marker["content"]
    dropped = (len(messages) - len(out) + 1) // 2
    assert f"{dropped} earlier turns" in marker["content"]
    assert tool_call_problems(out) == []


def test_marker_before_a_user_message_is_an_assistant_message() -> None:
    """In a chat the kept turns start with a user message, so the marker speaks as the assistant."""
    messages = [user("task"), *chat(10)[1:]]
    m = meter()
    out = prune(messages, layout(messages), spec(m.total(messages) // 2), m)
    assert out is not None and out[1]["role"] == "assistant" and out[2]["role"] == "user"


def test_nothing_prunable_returns_none() -> None:
    """With no more turns than keep_last_turns there is nothing to drop."""
    messages = agent(2)
    assert prune(messages, layout(messages), spec(10, keep=2), meter()) is None


def test_protected_turn_stays_in_place() -> None:
    """A mid-conversation system message survives pruning, in its place."""
    messages = [system("s"), user("task")]
    for i in range(6):
        messages += [call(f"c{i}"), tool(f"c{i}", blob(i, 20))]
        if i == 2:
            messages.append(system("Switch to French from now on."))
    m = meter()
    out = prune(messages, layout(messages), spec(m.total(messages) // 3, keep=1), m)
    assert out is not None
    assert {"role": "system", "content": "Switch to French from now on."} in out
    assert tool_call_problems(out) == []


def test_dropped_original_gives_its_content_to_the_first_kept_copy() -> None:
    """When the output a duplicate referred to is dropped, the first kept copy carries the content."""
    same = blob(9, 30)
    messages = [system("s"), user("task"), call("a"), tool("a", same), call("b"), tool("b", blob(1, 60)),
                call("c"), tool("c", same), call("d"), tool("d", same), call("e"), tool("e", "ok")]
    m = meter()
    out = prune(messages, layout(messages), spec(m.total(messages) - 100, keep=3), m)
    assert out is not None
    contents = [x.get("content") for x in out if x.get("role") == "tool"]  # turn a was dropped
    assert contents[1:3] == [same, markers.duplicate_of("c")]


def test_pricing_matches_the_built_conversation() -> None:
    """The arithmetic total of every cut equals the meter's count of the conversation it builds."""
    same = blob(5, 30)
    messages = [system("s"), user("task")]
    for i in range(12):
        messages += [call(f"c{i}"), tool(f"c{i}", same if i % 3 == 0 else blob(i, 10 + i))]
    m = meter(fixed=17)
    shape = layout(messages)
    pricer = _Pricer(messages, shape, shape.prunable(2), m, messages, None)
    for cut in range(1, len(shape.prunable(2)) + 1):
        assert pricer.total(cut) == m.total(dedupe(pricer.build(cut), m.text))


def test_grid_marks_a_cut_each_block() -> None:
    """Candidate cuts are the first turn boundaries at or after each multiple of the block, plus the last."""
    assert _grid([40, 40, 40, 40, 40], 100) == [3, 5]
    assert _grid([150, 10, 10], 100) == [1, 3]
    assert _grid([10, 10], 100) == [2]


def grow(stable: bool) -> tuple[int, int]:
    """Replay a growing agent conversation under a fixed budget: (requests pruned, new cut positions)."""
    full = agent(40, lines=12)
    budget = meter().total(full[:30])
    cuts: list[int] = []
    for end in range(30, len(full) + 1, 2):
        m = meter()
        messages = full[:end]
        out = prune(messages, layout(messages), spec(budget, keep=2, stable=stable), m)
        assert out is not None and m.total(out) <= budget
        # first kept message after the marker
        cuts.append(next(i for i, x in enumerate(messages) if x is out[3]))
    return len(cuts), len(set(cuts))


def test_stable_prefix_moves_the_cut_in_blocks() -> None:
    """With stable_prefix the cut (hence the prompt prefix) changes far less often than without."""
    requests, stable_moves = grow(stable=True)
    _, exact_moves = grow(stable=False)
    assert exact_moves == requests  # the minimal cut moves on every request
    assert stable_moves <= requests // 3
