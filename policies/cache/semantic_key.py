"""What the semantic cache compares, and inside which exact namespace.

The question is the text of the last user turn; everything else (tenant,
upstream, model, system prompt, tools, earlier turns, parameters, config
version) must match exactly, so it is hashed into the namespace with the
question replaced by a placeholder. A request whose last turn is not plain user
text (images, files), or, by default, any request with tool calls or tool
results in it, has no question: agents' tool loops need exact answers.
"""
from __future__ import annotations

import hashlib
from typing import Any

from gateway.exchange import Exchange
from policies.cache.keys import answer_fields, canonical, make_key

_PLACEHOLDER = "\x00question\x00"
_TOOL_ITEM_TYPES = frozenset({"function_call", "function_call_output", "custom_tool_call",
                              "custom_tool_call_output", "computer_call", "computer_call_output"})


def text_of(content: Any) -> str | None:
    """Plain text of a message content; None when it holds anything but text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                return None
            if not isinstance(part.get("text"), str):
                return None
            texts.append(part["text"])
        return "\n".join(texts)
    return None


def _has_tool_turns(messages: list[Any]) -> bool:
    for m in messages:
        if not isinstance(m, dict):
            return True
        if m.get("role") in ("tool", "function") or m.get("tool_calls") or m.get("function_call") \
                or m.get("type") in _TOOL_ITEM_TYPES:
            return True
    return False


def split_question(operation: str, body: dict[str, Any], skip_tool_turns: bool) -> tuple[str, Any] | None:
    """(question, the body's fields with the question replaced by a placeholder), or None."""
    fields = answer_fields(body)
    if operation == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or (skip_tool_turns and _has_tool_turns(messages)):
            return None
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "user":
            return None
        question = text_of(last.get("content"))
        fields["messages"] = [*messages[:-1], {**last, "content": _PLACEHOLDER}]
    elif operation == "responses":
        value = body.get("input")
        if isinstance(value, str):
            question, fields["input"] = value, _PLACEHOLDER
        elif isinstance(value, list) and value and not (skip_tool_turns and _has_tool_turns(value)):
            last = value[-1]
            if not isinstance(last, dict) or last.get("role", "user") != "user":
                return None
            question = text_of(last.get("content"))
            fields["input"] = [*value[:-1], {**last, "content": _PLACEHOLDER}]
        else:
            return None
    elif operation == "completions" and isinstance(body.get("prompt"), str):
        question, fields["prompt"] = body["prompt"], _PLACEHOLDER
    else:
        return None
    if question is None or not question or question.isspace():  # no copy of a 4 MB question
        return None
    return question, fields


def semantic_namespace(ex: Exchange, config_version: str, fields: dict[str, Any]) -> str:
    """The exact part of a semantic lookup; the tenant namespace is its hard prefix.

    The earlier turns (``messages`` or a list ``input``) are dumped and hashed one by one after the rest:
    one canonical dump of a 5 MB conversation kept the GIL ~20 ms in one call (issue 15). Each dump is a
    whole JSON value and never holds a NUL byte (orjson escapes it), so the NUL-separated sequence
    stands for exactly one list of turns."""
    name = next((key for key in ("messages", "input") if isinstance(fields.get(key), list)), None)
    turns: list[Any] = fields[name] if name is not None else []
    rest = {key: value for key, value in fields.items() if key != name}
    key = make_key(namespace=ex.request.namespace, upstream=ex.target.upstream, model=ex.target.model,
                   operation="semantic:" + ex.request.operation, config_version=config_version,
                   fields=[rest, name, len(turns)])
    digest = hashlib.sha256(key.digest.encode())
    for turn in turns:
        digest.update(b"\x00")
        digest.update(canonical(turn))
    return f"{key.namespace}:{digest.hexdigest()}"
