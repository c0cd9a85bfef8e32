"""Prompt-token counting for the shapes found in OpenAI-style request bodies.

Pure functions over an already-bound string counter (``CountFn``), split from
:mod:`gateway.tokens.tokenizer` so the body-shape rules (OpenAI's chat formula, content parts,
tool calls, Responses API items) read on their own and are testable without models.
Bodies come from clients, so malformed shapes count as 0 instead of raising: the
upstream is the one that validates requests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

__all__ = [
    "IMAGE_PART_TOKENS",
    "REPLY_PRIMING_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "CountFn",
    "count_content",
    "count_messages",
    "count_responses",
    "count_token_input",
    "count_tools",
]

# OpenAI cookbook ("How to count tokens with tiktoken"): every chat message is wrapped
# as <|start|>{role/name}\n{content}<|end|>\n (3 tokens), a name costs 1 more, and
# every reply is primed with <|start|>assistant<|message|> (3 tokens).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

# An image part is billed by size and detail (85 base tokens + 170 per 512px tile for
# gpt-4o). The body only carries a URL, and fetching it on the hot path is out of the
# question, so each image counts as the 85-token base cost (exact for detail="low").
IMAGE_PART_TOKENS = 85
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})

CountFn = Callable[[str], int]
"""Counts the tokens of one string with the request's encoding (memoised by the caller)."""


def count_messages(count: CountFn, messages: object) -> int:
    """OpenAI's chat formula; non-list ``messages`` and non-dict entries count as 0."""
    if not isinstance(messages, (list, tuple)) or not messages:
        return 0
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        if isinstance(message, Mapping):
            total += _count_message(count, message)
    return total


def _count_message(count: CountFn, message: Mapping[str, Any]) -> int:
    """One chat message. Like the cookbook, every plain string field is counted
    (role, tool_call_id, refusal, ...); structured fields are counted by shape."""
    total = TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            total += count_content(count, value)
        elif key == "tool_calls":
            total += _count_tool_calls(count, value)
        elif key == "function_call":  # legacy single call: {"name", "arguments"}
            total += _count_call(count, value)
        elif isinstance(value, str):
            total += count(value) + (TOKENS_PER_NAME if key == "name" else 0)
    return total


def count_content(count: CountFn, content: object) -> int:
    """String content, or a list of parts where only text counts and images are estimated."""
    if isinstance(content, str):
        return count(content)
    if isinstance(content, (list, tuple)):
        return sum(_count_part(count, part) for part in content)
    if isinstance(content, Mapping):
        return _count_part(count, content)
    return 0


def _count_part(count: CountFn, part: object) -> int:
    """A content part: ``text``/``input_text``/``output_text`` by their text, images fixed."""
    if isinstance(part, str):
        return count(part)
    if not isinstance(part, Mapping):
        return 0
    text = part.get("text")
    if isinstance(text, str):
        return count(text)
    return IMAGE_PART_TOKENS if part.get("type") in IMAGE_PART_TYPES else 0


def _count_tool_calls(count: CountFn, tool_calls: object) -> int:
    """Assistant ``tool_calls``: the function (or custom tool) name plus its arguments."""
    if not isinstance(tool_calls, (list, tuple)):
        return 0
    total = 0
    for call in tool_calls:
        if isinstance(call, Mapping):
            total += _count_call(count, call.get("function") or call.get("custom"))
    return total


def _count_call(count: CountFn, call: object) -> int:
    """``{"name", "arguments"}`` (function) or ``{"name", "input"}`` (custom tool)."""
    if not isinstance(call, Mapping):
        return 0
    total = 0
    for key in ("name", "arguments", "input"):
        value = call.get(key)
        if isinstance(value, str):
            total += count(value)
        elif isinstance(value, Mapping):  # clients that send arguments as an object
            total += _count_json(count, value)
    return total


def _count_json(count: CountFn, value: object) -> int:
    """Tokens of ``value`` as compact JSON; unserialisable values count as 0."""
    try:
        return count(orjson.dumps(value).decode())
    except orjson.JSONEncodeError:
        return 0


def _tool_payload(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """What the model sees of a tool: name/description/parameters for function tools
    (chat's nested ``function`` or responses' flat form), the whole definition otherwise."""
    function = tool.get("function")
    if isinstance(function, Mapping):
        source = function
    elif tool.get("type", "function") == "function":
        source = tool
    else:
        return tool
    return {key: source[key] for key in ("name", "description", "parameters") if key in source}


def count_tools(count: CountFn, tools: object) -> int:
    """Approximate: OpenAI renders tools in an internal format close in size to compact JSON."""
    if not isinstance(tools, (list, tuple)):
        return 0
    return sum(_count_json(count, _tool_payload(tool)) for tool in tools if isinstance(tool, Mapping))


def count_token_input(count: CountFn, value: object) -> int:
    """Completions ``prompt`` / embeddings ``input``: str, list[str], list[int] or list[list[int]]."""
    if isinstance(value, str):
        return count(value)
    if not isinstance(value, (list, tuple)) or not value:
        return 0
    if isinstance(value[0], int):  # a single pre-tokenized prompt
        return len(value)
    total = 0
    for item in value:
        if isinstance(item, str):
            total += count(item)
        elif isinstance(item, (list, tuple)):
            total += len(item)
    return total


def count_responses(count: CountFn, body: Mapping[str, Any]) -> int:
    """Responses API: ``instructions`` as a system message, ``input`` as a user message
    (str) or a list of items, plus the reply priming and any tools."""
    items: list[object] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        items.append({"role": "system", "content": instructions})
    user_input = body.get("input")
    if isinstance(user_input, str):
        items.append({"role": "user", "content": user_input})
    elif isinstance(user_input, (list, tuple)):
        items.extend(user_input)
    total = sum(_count_response_item(count, item) for item in items)
    if total:
        total += REPLY_PRIMING_TOKENS
    return total + count_tools(count, body.get("tools"))


def _count_response_item(count: CountFn, item: object) -> int:
    """One input item: a message (``content``), a ``function_call`` (name + arguments),
    a ``*_call_output`` (``output``), or a bare ``text``. Ids and statuses are not
    model-visible and are skipped; reasoning items count only the overhead because
    their content is encrypted or dropped between turns."""
    if isinstance(item, str):
        return count(item)
    if not isinstance(item, Mapping):
        return 0
    total = TOKENS_PER_MESSAGE + count_content(count, item.get("content"))
    total += count_content(count, item.get("output"))
    for key in ("role", "name", "arguments", "input", "text"):
        value = item.get(key)
        if isinstance(value, str):
            total += count(value)
    return total
