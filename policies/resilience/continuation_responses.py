"""The Responses API dialect of mid-stream continuation (``policies/resilience/continuation.py``).

``ResponsesSoFar`` reads the primary's typed events: the response id, the message item and its
``output_text.delta`` text, the last ``sequence_number``; anything but one plain text message
(a function call, reasoning, a refusal) makes it not plain. ``ResponsesRewrite`` turns the
continuation's events into the primary's: its opening events (created, in_progress, item and part
added) are dropped, deltas move to the primary's item, and the closing events (``output_text.done``,
``content_part.done``, ``output_item.done``, ``response.completed``) carry the whole text, the
primary's ids and the summed output tokens, so the SDK's rebuilt ``output_text`` is the whole answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import UpstreamFailure
from gateway.sse import parse_event
from policies.resilience.continuation import Verdict

_OPENING = frozenset({"response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"})
_ENDS = frozenset({"response.completed", "response.incomplete"})
_NOT_PLAIN = ("function_call", "reasoning", "refusal", "custom_tool", "mcp", "web_search", "file_search")


@dataclass(slots=True)
class ResponsesSoFar:
    text: list[str] = field(default_factory=list)
    chunks: int = 0
    plain: bool = True
    finished: bool = False  # the text is whole (output_text.done went out)
    done: bool = False  # response.completed / incomplete went out
    response_id: Any = None
    item_id: Any = None
    sequence: int = 0

    def look(self, event: bytes) -> Verdict:
        obj = _object(event)
        if obj is None:
            return "ok" if parse_event(event)[1] is None else "malformed"
        kind = obj.get("type")
        if kind in ("error", "response.failed") or obj.get("error") is not None:
            return "error"
        if isinstance(obj.get("sequence_number"), int):
            self.sequence = obj["sequence_number"]
        if not isinstance(kind, str):
            return "ok"
        if kind == "response.created" and isinstance(obj.get("response"), dict):
            self.response_id = obj["response"].get("id")
        elif kind == "response.output_item.added":
            self._item(obj.get("item"))
        elif kind == "response.output_text.delta" and isinstance(obj.get("delta"), str):
            self.text.append(obj["delta"])
            self.chunks += 1
        elif kind == "response.output_text.done":
            self.finished = True
        elif kind in _ENDS:
            self.done = True
        elif any(word in kind for word in _NOT_PLAIN):
            self.plain = False
        return "done" if kind in _ENDS else "ok"

    def _item(self, item: Any) -> None:
        if isinstance(item, dict) and (item.get("type") != "message" or self.item_id is not None):
            self.plain = False  # a tool call, reasoning, or a second message
        elif isinstance(item, dict):
            self.item_id = item.get("id")

    def closing(self) -> bytes:
        return b""  # a missing response.completed cannot be made up


class ResponsesRewrite:
    __slots__ = ("extra", "so_far")

    def __init__(self, so_far: ResponsesSoFar) -> None:
        self.so_far = so_far
        self.extra: list[str] = []

    def event(self, event: bytes) -> tuple[bytes, bool]:
        obj = _object(event)
        if obj is None:
            if parse_event(event)[1] is None:
                return b"", False
            raise UpstreamFailure("malformed_event", "the continuation sent a malformed event",
                                  committed=True)
        kind = obj.get("type")
        if kind in ("error", "response.failed") or obj.get("error") is not None:
            raise UpstreamFailure("error_event", "the continuation sent an error event", committed=True)
        if kind in _OPENING or not isinstance(kind, str):
            return b"", False
        self._rewrite(kind, obj)
        so_far = self.so_far
        so_far.sequence += 1
        obj["sequence_number"] = so_far.sequence
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n", kind in _ENDS

    def _rewrite(self, kind: str, obj: dict[str, Any]) -> None:
        so_far = self.so_far
        whole = "".join(so_far.text) + "".join(self.extra)
        if "item_id" in obj:
            obj.update(item_id=so_far.item_id, output_index=0)
        if kind == "response.output_text.delta" and isinstance(obj.get("delta"), str):
            self.extra.append(obj["delta"])
        elif kind == "response.output_text.done":
            obj["text"] = whole
        elif kind == "response.content_part.done" and isinstance(obj.get("part"), dict):
            obj["part"]["text"] = whole
        elif kind == "response.output_item.done" and isinstance(obj.get("item"), dict):
            _whole_item(obj["item"], so_far.item_id, whole)
        elif kind in _ENDS and isinstance(obj.get("response"), dict):
            response = obj["response"]
            response["id"] = so_far.response_id
            for item in response.get("output") or ():
                if isinstance(item, dict) and item.get("type") == "message":
                    _whole_item(item, so_far.item_id, whole)
            usage = response.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int):
                usage["output_tokens"] += so_far.chunks  # the part the primary produced
                if isinstance(usage.get("total_tokens"), int):
                    usage["total_tokens"] += so_far.chunks


def _whole_item(item: dict[str, Any], item_id: Any, whole: str) -> None:
    item["id"] = item_id
    for part in item.get("content") or ():
        if isinstance(part, dict) and part.get("type") == "output_text":
            part["text"] = whole


def _object(event: bytes) -> dict[str, Any] | None:
    _, data = parse_event(event)
    if data is None:
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None
