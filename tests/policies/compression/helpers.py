"""Conversation builders and a cheap deterministic counter for the compression tests.

``count_chars`` stands in for a tokenizer where exact BPE counts do not matter
(about four characters per token, like English text); tests that need real
counts use ``gateway.tokens.tokenizer.Tokenizer``.
"""
from __future__ import annotations

import json
from typing import Any

from policies.compression.meter import Meter

Msg = dict[str, Any]


def count_chars(text: str) -> int:
    return (len(text) + 3) // 4


def meter(fixed: int = 0) -> Meter:
    return Meter(count_chars, fixed)


def system(text: str, role: str = "system") -> Msg:
    return {"role": role, "content": text}


def user(text: str) -> Msg:
    return {"role": "user", "content": text}


def assistant(text: str) -> Msg:
    return {"role": "assistant", "content": text}


def call(*ids: str, name: str = "lookup") -> Msg:
    calls = [{"id": i, "type": "function", "function": {"name": name, "arguments": json.dumps({"q": i})}}
             for i in ids]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def tool(call_id: str, content: str) -> Msg:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def blob(seed: int, lines: int) -> str:
    """A JSON-ish tool output of about ``lines * 8`` tokens, different for each seed."""
    return "\n".join(
        f'{{"row": {i}, "seed": {seed}, "value": "v{seed}-{i}-xxxxxxxxxx"}}' for i in range(lines)
    )


def agent(steps: int, lines: int = 40, task: str = "Audit the orders.") -> list[Msg]:
    """system, task, then ``steps`` tool-call turns (assistant call + tool answer)."""
    messages = [system("You are an agent."), user(task)]
    for i in range(steps):
        messages += [call(f"c{i}"), tool(f"c{i}", blob(i, lines))]
    return messages


def chat(rounds: int, words: int = 60) -> list[Msg]:
    """system, then ``rounds`` user/assistant exchanges, ending with a user question."""
    messages = [system("You are a helpful assistant.")]
    for i in range(rounds):
        messages += [user(f"question {i} " + "word " * 10), assistant(f"answer {i} " + "text " * words)]
    messages.append(user("final question"))
    return messages
