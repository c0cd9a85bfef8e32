"""Watch an SSE stream on its way through without re-encoding it.

The inspector sees every chunk exactly as written to the client and only looks
for what the gateway needs: the first content/tool-call delta (TTFT), the gaps
between content chunks (inter-token latency), the usage event, finish reasons,
``[DONE]`` and error events. JSON is parsed only for the few events that carry
usage or a finish reason; plain content chunks cost a few ``bytes.find`` calls.
Events split across chunks are reassembled from a small tail buffer.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from gateway.exchange import Usage
from gateway.usage import usage_from_response_obj

# A delta that carries something the user sees: text, reasoning, tool calls, or a responses API delta.
_TOKEN_MARKERS = (b'"content":"', b'"tool_calls"', b'"text":"', b'"reasoning_content":"', b'.delta"')
_EMPTY_CONTENT = b'"content":""'
# What makes a chunk worth splitting into events (spelled out inline in ``feed``; keep both in step).
_EVENT_MARKERS = (b'"usage":{', b'"finish_reason":"', b"[DONE]", b'"error"', b'"type":"response.')
_MAX_EVENT = 1 << 20
_FINISH = re.compile(rb'"finish_reason":"([a-z_]+)"')


@dataclass(slots=True)
class StreamInspector:
    clock: Callable[[], float]
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    gaps: list[float] = field(default_factory=list)
    usage: Usage | None = None
    usage_events: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    model: str = ""
    done: bool = False
    error_event: bool = False
    content_chunks: int = 0
    _tail: bytes = b""

    def feed(self, chunk: bytes) -> None:
        if self._is_token_chunk(chunk):
            now = self.clock()
            if self.first_token_at == 0.0:
                self.first_token_at = now
            else:
                self.gaps.append(now - self.last_token_at)
            self.last_token_at = now
            self.content_chunks += 1
        data = self._tail + chunk if self._tail else chunk
        if data.endswith(b"\n\n"):  # the usual case: whole events, nothing to keep, no copy
            complete, self._tail = data, b""
        else:
            cut = data.rfind(b"\n\n")
            if cut < 0:
                self._tail = data if len(data) < _MAX_EVENT else b""
                return
            complete, self._tail = data[:cut], data[cut + 2 :]
        # Spelled out rather than any(generator): this runs for every chunk of every stream.
        if (b'"usage":{' in complete or b'"finish_reason":"' in complete or b"[DONE]" in complete
                or b'"error"' in complete or b'"type":"response.' in complete
                or (not self.model and b'"model":"' in complete)):
            for event in complete.split(b"\n\n"):
                if event:
                    self._on_event(event)

    @staticmethod
    def _is_token_chunk(chunk: bytes) -> bool:
        for marker in _TOKEN_MARKERS:
            at = chunk.find(marker)
            if at >= 0:
                if marker == b'"content":"' and chunk.startswith(_EMPTY_CONTENT, at) \
                        and chunk.count(b'"content":"') == chunk.count(_EMPTY_CONTENT):
                    continue
                return True
        return False

    def _on_event(self, event: bytes) -> None:
        payload = _data_of(event)
        if payload is None:
            return
        if payload == b"[DONE]":
            self.done = True
            return
        if payload.startswith(b'{"error"'):
            self.error_event = True
            return
        if b'"type":"response.completed"' in payload:
            self.done = True
        elif b'"type":"response.failed"' in payload or b'"type":"error"' in payload:
            self.error_event = True
        for reason in _FINISH.findall(payload):
            self.finish_reasons.append(reason.decode())
        if b'"usage":{' in payload or (not self.model and b'"model":"' in payload):
            self._parse(payload)

    def _parse(self, payload: bytes) -> None:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        if obj.get("type") == "error":
            self.error_event = True
        inner = obj.get("response")
        model = inner.get("model") if isinstance(inner, dict) else obj.get("model")
        if isinstance(model, str) and not self.model:
            self.model = model
        usage = usage_from_response_obj(obj)
        if usage is not None:
            self.usage = usage
            self.usage_events += 1

    @property
    def clean_end(self) -> bool:
        """True when the stream ended as a provider ends a complete answer."""
        return self.done and not self.error_event


def _data_of(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one SSE event, or None when it has none."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:].strip()
    parts = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(parts).strip() if parts else None
