"""One cached answer in its single canonical form, and its compact encoding for Redis.

Every operation is stored as its complete non-stream JSON body (a
``chat.completion``, a ``text_completion``, a ``response``), however it was
produced; a streamed request is served by replaying that body as SSE
(``policies.cache.replay``). One form means a stream can hit an entry made by a
non-stream call and the reverse, and the entry is never stored twice. The
rendered SSE bytes are memoised on the in-memory object so a hot entry is
rendered once.

An entry holds bytes, not the parsed answer: a cache of thousands of parsed
JSON trees is millions of objects the cyclic garbage collector walks on every
full collection. The body is parsed when it is needed (an SSE replay, once per
entry and mode; reading the usage of a shared-store entry).
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.exchange import Usage
from gateway.right_size import right_sized
from gateway.usage import usage_from_response_obj

_MAGIC = b"GWC1"  # zlib-compressed
_PLAIN = b"GWC0"  # stored as is: below COMPRESS_MIN_BYTES, zlib's set-up costs more than the bytes it saves
COMPRESS_MIN_BYTES = 4096
OPAQUE_USAGE = frozenset({"tool", "embedding"})  # bodies without a usage object of their own
# What an entry holds besides its bytes: this object, its Usage, its key (an object and a 64-character
# digest), the store's slot and its dict entry. Measured: ~870-1,050 bytes per small answer kept in the
# exact cache (RSS growth over 4,000 stored answers, and tracemalloc). It was 200, and orjson's 4 KiB
# buffers came on top: a small answer held ~5x what the byte bound counted (``gateway/right_size.py``).
ENTRY_OVERHEAD = 900


@dataclass(slots=True, kw_only=True)
class CachedAnswer:
    operation: str  # chat | completions | responses | tool
    body: bytes  # canonical JSON body (or the raw body of a tool answer)
    created: float  # wall-clock seconds when the original answer was produced
    content_type: str = "application/json"
    usage: Usage | None = None
    text: str = ""  # the question's text, for semantic-cache guards (never sent to clients)
    _sse_usage: bytes | None = None  # the SSE replay with a usage chunk, once rendered
    _sse_plain: bytes | None = None  # ... and without
    encoded: bytes | None = None  # ``encode()`` done ahead, off the loop; taken (and dropped) by the store

    @classmethod
    def from_obj(cls, operation: str, obj: dict[str, Any], created: float) -> CachedAnswer:
        return cls(operation=operation, body=right_sized(orjson.dumps(obj)), created=created,
                   usage=usage_from_response_obj(obj))

    def obj(self) -> dict[str, Any]:
        """The body parsed (a fresh object each call: nothing parsed is kept)."""
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed

    def sse(self, include_usage: bool, render: Callable[[str, dict[str, Any], bool], bytes]) -> bytes:
        """The SSE replay of this answer, rendered by ``render`` on first use and memoised."""
        data = self._sse_usage if include_usage else self._sse_plain
        if data is None:
            data = render(self.operation, self.obj(), include_usage)
            if include_usage:
                self._sse_usage = data
            else:
                self._sse_plain = data
        return data

    @property
    def size(self) -> int:
        rendered = len(self._sse_usage or b"") + len(self._sse_plain or b"")
        return len(self.body) + rendered + len(self.text) + ENTRY_OVERHEAD

    @property
    def tokens(self) -> int:
        return self.usage.total if self.usage is not None else 0

    def encode(self) -> bytes:
        """Compressed bytes for a shared store: a small JSON header, a newline, the body."""
        head = orjson.dumps({"op": self.operation, "created": self.created, "ct": self.content_type,
                             "text": self.text, "tok": self.usage.prompt if self.usage is not None else None})
        if len(self.body) < COMPRESS_MIN_BYTES:
            return b"".join((_PLAIN, head, b"\n", self.body))
        return _MAGIC + zlib.compress(head + b"\n" + self.body, 3)

    @classmethod
    def decode(cls, data: bytes) -> CachedAnswer | None:
        """The inverse of :meth:`encode`; ``None`` for anything damaged or of another format."""
        plain = data.startswith(_PLAIN)
        if not plain and not data.startswith(_MAGIC):
            return None
        try:
            raw = data[len(_PLAIN):] if plain else zlib.decompress(data[len(_MAGIC):])
            head_bytes, _, body = raw.partition(b"\n")
            head = orjson.loads(head_bytes)
        except (zlib.error, orjson.JSONDecodeError):
            return None
        if not isinstance(head, dict) or not isinstance(head.get("op"), str):
            return None
        answer = cls(operation=head["op"], body=body, created=float(head.get("created") or 0.0),
                     content_type=str(head.get("ct") or "application/json"), text=str(head.get("text") or ""))
        if isinstance(head.get("tok"), int) and answer.operation in OPAQUE_USAGE:
            answer.usage = Usage(prompt=head["tok"])
        elif answer.content_type == "application/json" and answer.operation not in OPAQUE_USAGE:
            try:
                answer.usage = usage_from_response_obj(answer.obj())
            except orjson.JSONDecodeError:
                return None
        return answer
