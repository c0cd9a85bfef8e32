"""Token usage as providers report it, read from bodies and stream events.

Chat, completions and embeddings report ``prompt_tokens``/``completion_tokens``;
the Responses API reports ``input_tokens``/``output_tokens``. Both carry cached
and reasoning details under different names. Readers here are tolerant: a
missing or malformed usage gives ``None``, never an exception.
"""
from __future__ import annotations

from typing import Any

import orjson

from gateway.exchange import Usage


def usage_from_obj(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage or "output_tokens" in usage:
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
        in_details, out_details = usage.get("input_tokens_details"), usage.get("output_tokens_details")
    else:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        in_details, out_details = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    if not isinstance(prompt, int) and not isinstance(completion, int):
        return None
    cached = _int(in_details.get("cached_tokens")) if isinstance(in_details, dict) else 0
    return Usage(
        prompt=_int(prompt),
        completion=_int(completion),
        cached_prompt=cached or _int(usage.get("prompt_cache_hit_tokens")),  # DeepSeek's name for it
        reasoning=_int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0,
    )


def usage_from_response_obj(obj: Any) -> Usage | None:
    """Usage of a whole answer object (chat, completion, embeddings or a Response)."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("usage"), dict):
        return usage_from_obj(obj["usage"])
    inner = obj.get("response")  # responses API events wrap the response
    if isinstance(inner, dict):
        return usage_from_obj(inner.get("usage"))
    groq = obj.get("x_groq")  # Groq reports stream usage under x_groq
    if isinstance(groq, dict):
        return usage_from_obj(groq.get("usage"))
    return None


def usage_from_json_bytes(data: bytes) -> Usage | None:
    """Find ``"usage": {...}`` near the end of a JSON body without parsing the whole body.

    Embedding answers can be megabytes of vectors; usage sits at the end, so we
    parse only the balanced object after the last ``"usage"`` key.
    """
    at = data.rfind(b'"usage"')
    if at < 0:
        return None
    start = data.find(b"{", at)
    if start < 0 or data[at + 7 : start].strip(b" \t\r\n:"):
        return None
    usage = _closing_last(data, start)
    if usage is not None:
        return usage
    end = _balanced_end(data, start)
    if end < 0:
        return None
    try:
        return usage_from_obj(orjson.loads(data[start:end]))
    except orjson.JSONDecodeError:
        return None


def _closing_last(data: bytes, start: int) -> Usage | None:
    """The common shape first, at C speed: the usage object is the body's last member, closed by the
    ``}`` before the body's own. A slice from ``start`` that parses as JSON ends at the brace that closes
    the object opened there, which is what ``_balanced_end`` finds (within its window); anything else
    (another shape, a parse error) is left to it."""
    end = data.rfind(b"}", start, data.rfind(b"}")) + 1
    if end <= start or end - start > _WINDOW:
        return None
    try:
        return usage_from_obj(orjson.loads(data[start:end]))
    except orjson.JSONDecodeError:
        return None


_WINDOW = 4096  # bytes from the usage object's ``{`` within which it must close


def _balanced_end(data: bytes, start: int) -> int:
    depth = 0
    in_str = False
    escaped = False
    for i in range(start, min(len(data), start + _WINDOW)):
        c = data[i]
        if in_str:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
