"""Steps 1-3: normalise system prompts, truncate oversized tool outputs, dedupe repeated outputs."""
from __future__ import annotations

import json
import re
from functools import partial

import pytest

from gateway.tokens.tokenizer import Tokenizer
from policies.compression import markers
from policies.compression.meter import Meter
from policies.compression.steps import dedupe, head_tail, normalise, oversized, truncate
from tests.policies.compression.helpers import blob, call, count_chars, meter, system, tool, user


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


# --- normalise ---

def test_normalise_collapses_whitespace_runs_but_keeps_indentation() -> None:
    """Runs of spaces inside a line shrink to one; leading indentation and line breaks stay."""
    out = normalise([system("Rules:   be  brief.  \n  - nested   item\n\n\n\nEnd.")])
    assert out[0]["content"] == "Rules: be brief.\n  - nested item\n\nEnd."


def test_normalise_drops_paragraphs_repeated_across_prompts() -> None:
    """An instruction block already given is dropped; a prompt left empty is dropped whole."""
    messages = [
        system("Be brief.\n\nAnswer in JSON."),
        system("Answer   in JSON.\n\nUse EUR.", role="developer"),
        system("Be brief."),
        user("Be brief."),
    ]
    out = normalise(messages)
    assert [m["content"] for m in out] == ["Be brief.\n\nAnswer in JSON.", "Use EUR.", "Be brief."]
    assert out[1]["role"] == "developer"
    assert out[2] is messages[3]  # user messages are never touched


def test_normalise_keeps_fenced_code_verbatim() -> None:
    """Whitespace inside a fenced block is code and is not collapsed, blank lines included."""
    code = "```python\ndef f(x):\n    return  x   +  1\n\n\nprint(f(1))\n```"
    assert normalise([system(f"Example:\n\n{code}")])[0]["content"] == f"Example:\n\n{code}"


def test_normalise_handles_text_parts_and_leaves_clean_prompts_alone() -> None:
    """Content parts are normalised part by part; an already clean prompt is the same object."""
    clean = system("Be brief.")
    parts = {
        "role": "system",
        "content": [{"type": "text", "text": "Be  brief."}, {"type": "text", "text": "Be brief."}],
    }
    out = normalise([clean, parts])
    assert out[0] is clean
    assert len(out) == 1  # every paragraph of the second prompt repeats the first


def test_normalise_is_idempotent() -> None:
    """Normalising twice changes nothing the second time."""
    once = normalise([system(" a  b \n\n\n c\n\nc\n```\n x  y\n```"), system("c")])
    assert normalise(once) == once


# --- truncate ---

def test_head_tail_keeps_both_ends_and_reports_the_cut(tok: Tokenizer) -> None:
    """The cut output fits, starts and ends like the original and says how many tokens were cut."""
    text = json.dumps(
        {"rows": [{"i": i, "v": "x" * 30} for i in range(400)], "next_cursor": "cur_42"}, indent=1
    )
    count = partial(tok.count_text, "gpt-4o")
    total = count(text)
    out, tokens = head_tail(text, total, 500, count)
    assert tokens == count(out) <= 500
    assert out.startswith(text[:20]) and out.endswith('"next_cursor": "cur_42"\n}')
    cut = int(re.search(r"gateway: (\d+) tokens", out).group(1))  # type: ignore[union-attr]
    kept = tokens - count(markers.truncated(cut))
    assert abs(cut - (total - kept)) <= 2  # exact up to a token merged at each seam


def test_head_tail_cuts_at_line_breaks() -> None:
    """Head and tail are whole lines when the text has lines."""
    out, _ = head_tail(blob(1, 200), count_chars(blob(1, 200)), 300, count_chars)
    head, tail = re.split(
        r"\n\n\[\.\.\. gateway: \d+ tokens of this tool output were cut here \.\.\.\]\n\n", out
    )
    assert head.endswith("}\n") and tail.startswith("{")


def test_truncate_only_touches_the_given_oversized_outputs() -> None:
    """Small outputs, non-tool messages and outputs past ``stop`` are left as they are."""
    big, small = blob(1, 100), blob(2, 2)
    messages = [user(big), call("a"), tool("a", big), call("b"), tool("b", small), call("c"), tool("c", big)]
    found = oversized(messages, 200, count_chars, stop=6)
    assert found == [2]
    m = meter()
    out = truncate(messages, found, 200, m)
    assert m.text(out[2]["content"]) <= 200 and "tokens of this tool output were cut" in out[2]["content"]
    assert all(out[i] is messages[i] for i in (0, 1, 3, 4, 5, 6))


def test_truncate_joins_text_parts_and_skips_images() -> None:
    """A tool output made of text parts becomes one string; one with an image is not plain text."""
    parts = [{"type": "text", "text": blob(1, 60)}, {"type": "text", "text": blob(2, 60)}]
    image = [{"type": "image_url", "image_url": {"url": "data:x"}}, {"type": "text", "text": blob(3, 200)}]
    messages = [call("a", "b"), {"role": "tool", "tool_call_id": "a", "content": parts},
                {"role": "tool", "tool_call_id": "b", "content": image}]
    assert oversized(messages, 200, count_chars) == [1]
    out = truncate(messages, [1], 200, meter())
    assert isinstance(out[1]["content"], str) and out[1]["content"].startswith(blob(1, 60)[:30])


# --- dedupe ---

def test_dedupe_replaces_repeats_by_a_reference_to_the_first() -> None:
    """The second and third identical outputs point at the first call; the first stays whole."""
    out_text = blob(7, 20)
    messages = [
        call("a"),
        tool("a", out_text),
        call("b"),
        tool("b", out_text),
        call("c"),
        tool("c", out_text),
    ]
    out = dedupe(messages, count_chars)
    assert out[1] is messages[1]
    assert out[3]["content"] == out[5]["content"] == markers.duplicate_of("a")
    assert out[3]["tool_call_id"] == "b"


def test_dedupe_keeps_short_outputs() -> None:
    """Outputs shorter than a reference ("ok", "[]") are kept as they are."""
    messages = [call("a"), tool("a", "ok"), call("b"), tool("b", "ok")]
    assert dedupe(messages, count_chars) == messages


def test_dedupe_never_replaces_when_the_reference_costs_as_much() -> None:
    """A repeated output is replaced only if the reference is cheaper."""
    text = "x" * 70
    messages = [call("a"), tool("a", text), call("b"), tool("b", text)]
    assert dedupe(messages, lambda s: 1)[3] is messages[3]
    assert Meter(count_chars).total(dedupe(messages, count_chars)) < Meter(count_chars).total(messages)
