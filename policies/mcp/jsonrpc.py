"""JSON-RPC helpers: classify a posted body, build answers, read SSE events."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

PARSE_ERROR, INVALID_REQUEST, INTERNAL_ERROR = -32700, -32600, -32603
UPSTREAM_ERROR = -32000
LIST_METHODS = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list"})
READ_METHODS = LIST_METHODS | frozenset({"resources/read", "prompts/get", "ping"})


@dataclass(frozen=True, slots=True)
class Message:
    """One posted JSON-RPC message, as far as the policies need it."""

    method: str | None
    id: Any
    params: dict[str, Any]
    is_request: bool

    @property
    def tool(self) -> str | None:
        name = self.params.get("name")
        return name if self.method == "tools/call" and isinstance(name, str) else None


class BadMessage(ValueError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(PARSE_ERROR, "Parse error: the body is not JSON") from exc


def message(value: Any) -> Message:
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        raise BadMessage(INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message")
    method = value.get("method")
    if method is not None and not isinstance(method, str):
        raise BadMessage(INVALID_REQUEST, "Invalid Request: method must be a string")
    params = value.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadMessage(INVALID_REQUEST, "Invalid Request: params must be an object")
    if method == "tools/call" and not isinstance((params or {}).get("name"), str):
        raise BadMessage(INVALID_REQUEST, "Invalid Request: tools/call needs params.name")
    return Message(method, value.get("id"), params or {}, method is not None and "id" in value)


def error(id_: Any, code: int, text: str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": text}})


def result(id_: Any, value: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": id_, "result": value})


def fallback(id_: Any, text: str, marked: bool = False) -> bytes:
    """A tool result the agent's model can read; ``marked`` adds ``_meta`` (when headers are already sent)."""
    value: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": True}
    if marked:
        value["_meta"] = {"x-gateway-fallback": True}
    return result(id_, value)


class SseReader:
    """Feed SSE bytes; get the JSON-RPC messages of complete ``data:`` events."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[Any]:
        self._buf += chunk.replace(b"\r\n", b"\n")
        out: list[Any] = []
        while b"\n\n" in self._buf:
            event, self._buf = self._buf.split(b"\n\n", 1)
            data = b"\n".join(
                line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if data:
                try:
                    out.append(orjson.loads(data))
                except orjson.JSONDecodeError:
                    continue
        return out


class JsonReader:
    """Feed an ``application/json`` answer's bytes; at the end, its JSON-RPC messages (one or a batch).

    Bodies past ``limit`` bytes are not kept (their messages are not read: no cache, no catalog).
    """

    def __init__(self, limit: int = 4 << 20) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = limit

    def feed(self, chunk: bytes) -> list[Any]:
        self._size += len(chunk)
        if self._size <= self._limit:
            self._parts.append(chunk)
        return []

    def end(self) -> list[Any]:
        if self._size > self._limit or not self._parts:
            return []
        try:
            value = orjson.loads(b"".join(self._parts))
        except orjson.JSONDecodeError:
            return []
        return value if isinstance(value, list) else [value]


def sse_event(payload: bytes) -> bytes:
    return b"event: message\ndata: " + payload + b"\n\n"


def canonical_json(value: Any) -> bytes:
    return orjson.dumps(value)
