"""Render a canonical answer as the SSE stream a provider would have sent.

Chat: a role delta, reasoning and content in several small deltas, each tool
call as a head delta (id, type, name) followed by argument pieces, a finish
chunk, a usage chunk only when the request asked for one, then ``[DONE]``.
Completions: text pieces per choice and a finish chunk. Responses: the typed
event sequence (created, in_progress, output_item.added, content_part.added,
output_text.delta..., *.done, completed) with consecutive ``sequence_number``s.
The openai SDK reassembles exactly the stored message from these events.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

PIECE_CHARS = 16  # small enough to look like token deltas, large enough to stay cheap
DONE = b"data: [DONE]\n\n"
_STRING_DELTAS = ("reasoning_content", "reasoning", "content", "refusal")
_SKIP_MESSAGE_KEYS = frozenset({"role", "tool_calls", *_STRING_DELTAS})
# Fields the renderer builds; any other top-level or choice field is a provider extra, sent once on the
# first chunk (where the openai SDK's accumulation takes them from).
_BUILT_TOP = frozenset({"id", "object", "created", "model", "system_fingerprint", "service_tier", "choices",
                        "usage"})
_BUILT_CHOICE = frozenset({"index", "message", "text", "finish_reason", "logprobs"})


def _id(obj: dict[str, Any]) -> dict[str, Any]:
    """The answer's id, or none when the provider gave none (as it streamed it)."""
    return {"id": obj["id"]} if "id" in obj else {}


def _extras(obj: dict[str, Any], built: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in built}


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    for at in range(0, len(text), size):
        yield text[at:at + size]


def _frame(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def render_sse(operation: str, obj: dict[str, Any], include_usage: bool) -> bytes:
    if operation == "chat":
        return b"".join(_chat_frames(obj, include_usage))
    if operation == "completions":
        return b"".join(_completion_frames(obj, include_usage))
    if operation == "responses":
        return b"".join(_response_frames(obj))
    raise ValueError(f"no SSE form for {operation}")


def _chat_frames(obj: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
    base: dict[str, Any] = {**_id(obj), "object": "chat.completion.chunk", "created": obj.get("created", 0),
                            "model": obj.get("model", "")}
    for name in ("system_fingerprint", "service_tier"):
        if obj.get(name) is not None:
            base[name] = obj[name]
    top = _extras(obj, _BUILT_TOP)
    for ch in obj.get("choices") or ():
        yield from _chat_choice_frames(base, ch, top)
        top = {}
    if include_usage and obj.get("usage") is not None:
        yield _frame({**base, "choices": [], "usage": obj["usage"]})
    yield DONE


def _chat_chunk(base: dict[str, Any], index: int, delta: dict[str, Any], finish: str | None = None,
                logprobs: Any = None, extras: tuple[dict[str, Any], dict[str, Any]] = ({}, {})) -> bytes:
    """One chunk; ``extras``: the provider's top-level and choice fields (first chunk only)."""
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish, **extras[1]}
    return _frame({**base, "choices": [choice], **extras[0]})


def _chat_choice_frames(base: dict[str, Any], ch: dict[str, Any], top: dict[str, Any]) -> Iterator[bytes]:
    """One choice: role delta, string deltas, other message fields, tool call deltas, finish chunk."""
    index = int(ch.get("index") or 0)
    msg = ch.get("message") or {}
    logprobs = ch.get("logprobs")
    # Nulls and empty values (``refusal: null``, ``annotations: []``) ride on the role delta, as sent.
    empty = {k: v for k, v in msg.items() if v in (None, [], {}) and k not in ("role", "content")}
    yield _chat_chunk(base, index, {"role": msg.get("role", "assistant"),
                                    "content": "" if isinstance(msg.get("content"), str) else None, **empty},
                      extras=(top, _extras(ch, _BUILT_CHOICE)))
    for key in _STRING_DELTAS:
        value = msg.get(key)
        if isinstance(value, str):
            for piece in pieces(value):
                yield _chat_chunk(base, index, {key: piece}, logprobs=logprobs if key == "content" else None)
                if key == "content":
                    logprobs = None  # the whole list rides on the first content delta
    for key, value in msg.items():
        if key not in _SKIP_MESSAGE_KEYS and value not in (None, [], {}):
            yield _chat_chunk(base, index, {key: value})
    for position, call in enumerate(msg.get("tool_calls") or ()):
        yield from (_chat_chunk(base, index, {"tool_calls": [d]}) for d in _call_deltas(position, call))
    yield _chat_chunk(base, index, {}, ch.get("finish_reason") or "stop", logprobs)


def _call_deltas(position: int, call: dict[str, Any]) -> Iterator[dict[str, Any]]:
    fn = call.get("function") or {}
    head = {"index": position, "id": call.get("id"), "type": call.get("type", "function"),
            "function": {"name": fn.get("name", ""), "arguments": ""}}
    yield head
    for piece in pieces(fn.get("arguments") or ""):
        yield {"index": position, "function": {"arguments": piece}}


def _completion_frames(obj: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
    base = {**_id(obj), "object": "text_completion", "created": obj.get("created", 0),
            "model": obj.get("model", "")}
    if obj.get("system_fingerprint") is not None:
        base["system_fingerprint"] = obj["system_fingerprint"]
    top = _extras(obj, _BUILT_TOP)
    for ch in obj.get("choices") or ():
        index = int(ch.get("index") or 0)
        logprobs = ch.get("logprobs")
        extras = _extras(ch, _BUILT_CHOICE)  # the provider's own fields, on the choice's first chunk
        for text in [*pieces(ch.get("text") or ""), None]:
            choice = {"text": text or "", "index": index, "logprobs": logprobs,
                      "finish_reason": (ch.get("finish_reason") or "stop") if text is None else None}
            yield _frame({**base, "choices": [{**choice, **extras}], **top})
            logprobs, extras, top = None, {}, {}
    if include_usage and obj.get("usage") is not None:
        yield _frame({**base, "choices": [], "usage": obj["usage"]})
    yield DONE


class _Seq:
    """Typed Responses events with consecutive sequence numbers."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self.n}
        self.n += 1
        return b"event: " + kind.encode() + b"\n" + _frame(payload)


def _response_frames(obj: dict[str, Any]) -> Iterator[bytes]:
    ev = _Seq()
    start = {**obj, "status": "in_progress", "output": [], "usage": None}
    if "completed_at" in start:
        start["completed_at"] = None
    if "incomplete_details" in start:
        start["incomplete_details"] = None
    yield ev("response.created", response=start)
    yield ev("response.in_progress", response=start)
    for oi, item in enumerate(obj.get("output") or ()):
        yield from _item_events(ev, oi, item)
    final = "response.incomplete" if obj.get("status") == "incomplete" else "response.completed"
    yield ev(final, response=obj)


def _item_events(ev: _Seq, oi: int, item: dict[str, Any]) -> Iterator[bytes]:
    kind = item.get("type")
    item_id = item.get("id", "")
    if kind == "message":
        yield ev("response.output_item.added", output_index=oi,
                 item={**item, "status": "in_progress", "content": []})
        for ci, part in enumerate(item.get("content") or ()):
            yield from _part_events(ev, item_id, oi, ci, part)
    elif kind == "function_call":
        yield ev("response.output_item.added", output_index=oi,
                 item={**item, "status": "in_progress", "arguments": ""})
        args = item.get("arguments") or ""
        for piece in pieces(args):
            yield ev("response.function_call_arguments.delta", item_id=item_id, output_index=oi, delta=piece)
        yield ev("response.function_call_arguments.done", item_id=item_id, output_index=oi, arguments=args,
                 name=item.get("name"))
    else:
        yield ev("response.output_item.added", output_index=oi, item=item)
    yield ev("response.output_item.done", output_index=oi, item=item)


def _part_events(ev: _Seq, item_id: str, oi: int, ci: int, part: dict[str, Any]) -> Iterator[bytes]:
    loc = {"item_id": item_id, "output_index": oi, "content_index": ci}
    kind = part.get("type")
    if kind == "output_text":
        text = part.get("text") or ""
        yield ev("response.content_part.added", **loc, part={**part, "text": "", "annotations": []})
        for piece in pieces(text):
            yield ev("response.output_text.delta", **loc, delta=piece, logprobs=[])
        yield ev("response.output_text.done", **loc, text=text, logprobs=part.get("logprobs") or [])
    elif kind == "refusal":
        text = part.get("refusal") or ""
        yield ev("response.content_part.added", **loc, part={**part, "refusal": ""})
        for piece in pieces(text):
            yield ev("response.refusal.delta", **loc, delta=piece)
        yield ev("response.refusal.done", **loc, refusal=text)
    else:
        yield ev("response.content_part.added", **loc, part=part)
    yield ev("response.content_part.done", **loc, part=part)
