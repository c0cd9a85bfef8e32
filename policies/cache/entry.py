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

A streamed chat or completions answer in the providers' usual form is stored as
it came (``raw``: its SSE bytes, with the finish reason read from them at store
time): it is assembled into the canonical body on its first hit (``ready``), not
at every streamed miss whether or not anybody ever asks again (issue 21: 547k ->
51k instructions at the miss of a 20-chunk stream, +39k in all if it is ever hit).
Only up to ``RAW_MAX_BYTES``: a stream's SSE is ~15x its canonical body (~300-byte
chunks per token), kept as is (6.4 KB for 20 chunks: within the default cache's
6.7 KB per entry); compressing it costs ~35 instructions a byte and inflating it
again at the hit made a hit entry cost ~40% more than an eager store
(``bench/results/2026-12-07-stream-store.md``). Once assembled the raw bytes are
dropped. In Redis a raw stream from 4 KiB is compressed, as bodies are.
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
from policies.cache.canonical import answer_from_sse, finish_reasons

_MAGIC = b"GWC1"  # zlib-compressed
_PLAIN = b"GWC0"  # stored as is: below COMPRESS_MIN_BYTES, zlib's set-up costs more than the bytes it saves
# A stream stored raw, not assembled yet: a plain head, a newline, the stream as is / zlib-compressed. A
# gateway before these reads them as foreign data, a clean miss (``decode``: None); every encoding starts
# with ``GWC`` (``redis_store`` tells entries from claims so).
_RAW_PLAIN, _RAW_PACKED = b"GWC2", b"GWC3"
RAW_OPERATIONS = frozenset({"chat", "completions"})
# Streams stored raw (~25 chunks): where the assembly's fixed cost weighs (15-20% of a 20-chunk stream's
# instructions); longer ones are assembled at the store as before, inline or off the loop past 256 KiB.
RAW_MAX_BYTES = 8 * 1024
RAW_LEVEL = 1  # zlib level for Redis: ~10 µs for 6.4 KB, as small as level 3 on SSE (434 against 433 bytes)
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
    raw: bytes | None = None  # a stream's SSE (``body`` is b"" until ``ready`` assembles it)
    packed: bool = False  # ``raw`` is zlib-compressed (as read from Redis: inflated by ``ready``, bounded)
    reasons: tuple[str, ...] = ()  # ``raw``'s finish reasons as read at store time: its assembly must agree

    @classmethod
    def from_obj(cls, operation: str, obj: dict[str, Any], created: float) -> CachedAnswer:
        return cls(operation=operation, body=right_sized(orjson.dumps(obj)), created=created,
                   usage=usage_from_response_obj(obj))

    @classmethod
    def from_json(cls, operation: str, data: bytes, obj: dict[str, Any], created: float) -> CachedAnswer:
        """A non-stream answer kept as its bytes came (``obj``: those bytes parsed, already checked to be a
        complete answer): the same canonical form, without a second serialisation (~7k instructions for a
        small answer)."""
        return cls(operation=operation, body=right_sized(data), created=created,
                   usage=usage_from_response_obj(obj))

    @classmethod
    def from_stream(cls, operation: str, data: bytes, reasons: list[str], created: float) -> CachedAnswer:
        """A streamed answer kept as it came (``canonical.stream_reasons`` read ``reasons`` from it)."""
        return cls(operation=operation, body=b"", created=created, raw=data, reasons=tuple(reasons))

    def stream(self) -> bytes | None:
        """The raw stream as it came (None: no raw stream, or damaged, or over ``RAW_MAX_BYTES``)."""
        if self.raw is None or not self.packed:
            return self.raw
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(self.raw, RAW_MAX_BYTES + 1)  # bounded: no bomb from a shared store
        except zlib.error:
            return None
        return data if inflater.eof and len(data) <= RAW_MAX_BYTES else None

    def ready(self) -> bool:
        """The canonical body, assembled from ``raw`` on first use (then ``raw`` is dropped). False: ``raw``
        is not the complete answer its store-time reading promised (a broken chunk, another finish reason,
        several choices); the store then drops the entry and the request is a miss
        (``dropped_unassemblable``). At most ``RAW_MAX_BYTES``: inline, ~50 µs for a 20-chunk answer."""
        if self.raw is None:
            return True
        data = self.stream()
        obj = answer_from_sse(self.operation, data) if data is not None else None
        if obj is None or finish_reasons(self.operation, obj) != list(self.reasons):
            return False
        self.body = right_sized(orjson.dumps(obj))
        self.usage = usage_from_response_obj(obj)
        self.raw, self.packed, self.reasons = None, False, ()
        return True

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
        return len(self.body) + len(self.raw or b"") + rendered + len(self.text) + ENTRY_OVERHEAD

    @property
    def tokens(self) -> int:
        return self.usage.total if self.usage is not None else 0

    def encode(self) -> bytes:
        """Compressed bytes for a shared store: a small JSON header, a newline, the body."""
        tok = self.usage.prompt if self.usage is not None else None
        fields: dict[str, Any] = {"op": self.operation, "created": self.created, "ct": self.content_type,
                                  "text": self.text, "tok": tok}
        raw = self.raw
        if raw is not None:  # not assembled: the stream (compressed from 4 KiB), its reasons in the head
            fields["fr"] = self.reasons
            magic = _RAW_PACKED if self.packed or len(raw) >= COMPRESS_MIN_BYTES else _RAW_PLAIN
            if magic == _RAW_PACKED and not self.packed:
                raw = zlib.compress(raw, RAW_LEVEL)
            return b"".join((magic, orjson.dumps(fields), b"\n", raw))
        head = orjson.dumps(fields)
        if len(self.body) < COMPRESS_MIN_BYTES:
            return b"".join((_PLAIN, head, b"\n", self.body))
        return _MAGIC + zlib.compress(head + b"\n" + self.body, 3)

    @classmethod
    def decode(cls, data: bytes) -> CachedAnswer | None:
        """The inverse of :meth:`encode`; ``None`` for anything damaged or of another format."""
        magic = data[:4]
        if magic not in _MAGICS:
            return None
        try:
            raw = data[4:] if magic != _MAGIC else zlib.decompress(data[4:])
            head_bytes, _, body = raw.partition(b"\n")
            head = orjson.loads(head_bytes)
        except (zlib.error, orjson.JSONDecodeError):
            return None
        if not isinstance(head, dict) or not isinstance(head.get("op"), str):
            return None
        answer = cls(operation=head["op"], body=body, created=float(head.get("created") or 0.0),
                     content_type=str(head.get("ct") or "application/json"), text=str(head.get("text") or ""))
        if magic in (_RAW_PLAIN, _RAW_PACKED):
            return _raw_entry(answer, head.get("fr"), magic == _RAW_PACKED)
        if isinstance(head.get("tok"), int) and answer.operation in OPAQUE_USAGE:
            answer.usage = Usage(prompt=head["tok"])
        elif answer.content_type == "application/json" and answer.operation not in OPAQUE_USAGE:
            try:
                answer.usage = usage_from_response_obj(answer.obj())
            except orjson.JSONDecodeError:
                return None
        return answer


_MAGICS = (_PLAIN, _MAGIC, _RAW_PLAIN, _RAW_PACKED)


def _raw_entry(answer: CachedAnswer, reasons: Any, packed: bool) -> CachedAnswer | None:
    """A raw stream read back: its bytes move from ``body`` to ``raw``, compressed as they came (assembled by
    ``ready`` on its hit, inline; one past ``RAW_MAX_BYTES`` is no entry this gateway writes: a miss)."""
    if (answer.operation not in RAW_OPERATIONS or not answer.body or len(answer.body) > RAW_MAX_BYTES
            or not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons)):
        return None
    answer.raw, answer.body, answer.packed, answer.reasons = answer.body, b"", packed, tuple(reasons)
    return answer
