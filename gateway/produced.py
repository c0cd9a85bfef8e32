"""What a model produced, read back from the relayed chunks when nobody reported it.

The usage layer keeps references to the chunks it relayed (``Capture``, bounded
by ``CAPTURE_LIMIT``; no copies) under ``CAPTURE_KEY``. They are read only at the
end of a request and only when needed: to estimate completion tokens when the
provider reported no usage (the usage feature's finalizer), or to put the answer
on a trace span when content capture is on (the tracing feature).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.exchange import StateKey

CAPTURE_LIMIT = 256 * 1024  # bytes of relayed body kept per request for estimation
_STRING = rb'"((?:[^"\\]|\\.)*)"'
# What a model produced, per operation, in stream chunks. Responses API streams repeat the full
# text in their *.done events, so only their deltas count.
_PRODUCED: dict[str, re.Pattern[bytes]] = {
    "chat": re.compile(rb'"(?:content|reasoning_content|refusal|arguments)":' + _STRING),
    "completions": re.compile(rb'"text":' + _STRING),
    "responses": re.compile(rb'"delta":' + _STRING),
}


@dataclass(slots=True)
class Capture:
    """References to the chunks relayed for one request (no copies), up to ``CAPTURE_LIMIT`` bytes."""

    sse: bool
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    overflow: bool = False

    def add(self, chunk: bytes) -> None:
        if self.size < CAPTURE_LIMIT:
            self.chunks.append(chunk)
            self.size += len(chunk)
        else:
            self.overflow = True

    def keep(self, chunk: bytes) -> bytes:
        """``add`` as a body filter: the chunk passes unchanged."""
        self.add(chunk)
        return chunk

    def data(self) -> bytes:
        return b"".join(self.chunks)


CAPTURE_KEY: StateKey[Capture] = StateKey("usage.capture")  # set by the usage layer, read by finalize


def produced_texts(operation: str, capture: Capture) -> tuple[list[str], int]:
    data = capture.data()
    if capture.sse:
        pattern = _PRODUCED.get(operation)
        if pattern is None:
            return [], 0
        texts = [_unescape(m.group(1)) for m in pattern.finditer(data) if m.group(1)]  # not role chunks' ""
        return texts, len(texts)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [], 0  # a cut non-stream body: nothing usable was produced for the client
    texts = _texts_of_answer(obj)
    return texts, len(texts)


def _texts_of_answer(obj: Any) -> list[str]:
    """Generated text in a non-stream answer: chat messages, completion texts, Responses output."""
    texts: list[str] = []
    if not isinstance(obj, dict):
        return texts
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            _add_str(texts, message.get("content"))
            _add_str(texts, message.get("reasoning_content"))
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    _add_str(texts, call["function"].get("arguments"))
        _add_str(texts, choice.get("text"))
    for item in obj.get("output") or ():
        if not isinstance(item, dict):
            continue
        _add_str(texts, item.get("arguments"))
        for part in item.get("content") or ():
            if isinstance(part, dict):
                _add_str(texts, part.get("text"))
    return texts


def _add_str(texts: list[str], value: Any) -> None:
    if isinstance(value, str) and value:
        texts.append(value)


def _unescape(raw: bytes) -> str:
    if raw.find(b"\\") < 0:  # not ``in``: see ``gateway.sse.CR``
        return raw.decode(errors="replace")
    try:
        return str(orjson.loads(b'"' + raw + b'"'))
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")
