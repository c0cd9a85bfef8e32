"""Read SSE streams on their way through without re-encoding them.

Two pieces, shared by everything that looks inside upstream bytes (the relay's
inspector, usage stripping, the commit point, cache fill):

- ``EventSplitter`` turns arbitrary chunks into complete SSE events: any line
  end (``\\n``, ``\\r\\n``, ``\\r``, even a ``\\r\\n`` split across two chunks),
  events and UTF-8 sequences split anywhere. Events come out with ``\\n`` line
  ends and without their blank line. ``parse_event`` reads one event's fields
  (``event:``, joined multi-line ``data:``; comments and ``id:`` ignored).
- ``StreamInspector`` watches the stream the client receives and only looks for
  what the gateway needs: the first content/tool-call delta (TTFT), the gaps
  between content chunks (inter-token latency), usage, finish reasons,
  ``[DONE]``, error events and the model.

Cost: the common event (one ``data:`` line, a content delta, no finish reason
and no usage, in compact JSON or Python's default ``": "`` spacing) is
recognised with a few ``bytes.find`` calls; any other event (other spacing, a
finish or usage event, a Responses lifecycle event) is parsed with orjson, on
its data only. Correctness never depends on the JSON
being compact: the byte checks only short-cut events they can fully prove.
"""
from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.exchange import Usage
from gateway.usage import usage_from_response_obj

MAX_EVENT = 1 << 20  # an unterminated event longer than this is handed on, never buffered further
# Bytes looked for with ``in`` as integers, longer needles with ``find``: on CPython 3.11, ``b"\r" in chunk``
# first tries the needle as an integer and builds (and drops) a formatted TypeError, ~1,700 instructions a
# test (~390 ns against ~65 ns for ``13 in chunk``, a memchr, and ~180 ns for ``find``). Two such tests per
# chunk were 3.4% of a 20-chunk stream's instructions (issue 21).
CR, LF = ord("\r"), ord("\n")
# Compact markers of a delta that carries something the user sees; each must be followed by a non-empty value.
_TEXT_MARKERS = (b'"content":"', b'"text":"', b'"reasoning_content":"', b'"reasoning":"', b'"refusal":"')
_OBJECT_MARKERS = (b'"tool_calls":[{', b'"function_call":{', b'"audio":{')
# The same markers as Python's ``json.dumps`` writes them by default (a space after ``:`` and ``,``).
_SPACED_TEXT = tuple(m.replace(b'":', b'": ') for m in _TEXT_MARKERS)
_SPACED_OBJECT = tuple(m.replace(b'":', b'": ') for m in _OBJECT_MARKERS)
_RESPONSES_PREFIX = b'data: {"type":"response.'
_SPACED_RESPONSES_PREFIX = b'data: {"type": "response.'
# Responses events parsed even in compact form: they carry the model, usage, the end or a failure.
_RESPONSES_PARSED = frozenset({b"created", b"in_progress", b"completed", b"incomplete", b"failed", b"queued"})
_STRING_DELTAS = ("content", "reasoning_content", "reasoning", "refusal")
_BULK_MIN_EVENTS = 4  # fewer events in a chunk: looked at one by one (counting costs more than it saves)


class EventSplitter:
    """Complete SSE events out of chunks split anywhere, with any of the three SSE line ends."""

    __slots__ = ("_cr", "_tail", "limit", "overflow")

    def __init__(self, limit: int = MAX_EVENT) -> None:
        self._tail = b""
        self._cr = False  # the last chunk ended in \r: a \n opening the next one belongs to it
        self.limit = limit
        self.overflow = False

    def normalise(self, chunk: bytes) -> bytes:
        """``chunk`` with ``\\n`` line ends, remembering a trailing ``\\r`` for the next chunk."""
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if CR in chunk:
            self._cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return chunk

    def feed(self, chunk: bytes) -> bytes:
        """The events ``chunk`` completes, each followed by its blank line (``b""`` when none).

        An unterminated event longer than ``limit`` is returned as it is and ``overflow`` set.
        """
        if self._cr or CR in chunk:
            chunk = self.normalise(chunk)
        data = self._tail + chunk if self._tail else chunk
        if data.endswith(b"\n\n"):  # the usual case: whole events, nothing to keep, no copy
            self._tail = b""
            return data
        cut = data.rfind(b"\n\n")
        if cut < 0:
            if len(data) < self.limit:
                self._tail = data
                return b""
            self._tail, self.overflow = b"", True
            return data  # not SSE as we know it: handed on as is rather than buffered
        self._tail = data[cut + 2:]
        return data[:cut + 2]

    def events(self, chunk: bytes) -> list[bytes]:
        """The complete events ``chunk`` finishes, without their blank lines; empty events skipped."""
        block = self.feed(chunk)
        return [event for event in block.split(b"\n\n") if event] if block else []

    def rest(self) -> bytes:
        """What is held back (an unterminated event), handed out once."""
        rest, self._tail = self._tail, b""
        return rest


def parse_event(event: bytes) -> tuple[bytes, bytes | None]:
    """(event name, joined ``data:`` value) of one ``\\n``-separated event; data None when it has none."""
    if event.startswith(b"data:") and LF not in event:
        return b"", event[5:].strip()
    name = b""
    data: list[bytes] = []
    for line in event.split(b"\n"):
        fname, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if fname == b"data":
            data.append(value)
        elif fname == b"event":
            name = value.strip()
    if name == b"" and event.startswith(b"\xef\xbb\xbf"):  # a byte order mark before the first field
        return parse_event(event[3:])
    return name, (b"\n".join(data).strip() if data else None)


def one_line_events(block: bytes) -> int:
    """How many events a block of complete events holds when each is one ``data: `` line (0: not so).

    Two counts at C speed, no list: ``k`` separators ``\\n\\ndata: `` and ``2 k + 2`` line ends in all mean
    every line end belongs to a separator or to the block's end, so no event has a second line (``event:``,
    ``id:``, a comment). In a 62 KB block of the fake provider's events: ~25 + ~25 us, where counting
    ``\\n\\n`` alone took ~80 us (a two-byte needle is searched in short steps; in instructions the two
    counts are more, 465k against 265k: the line ends' count is a simple, fast byte loop)."""
    if not block.startswith(b"data: ") or not block.endswith(b"\n\n"):
        return 0
    events = block.count(b"\n\ndata: ") + 1
    return events if block.count(b"\n") == 2 * events else 0


def events_of(body: bytes) -> list[tuple[bytes, bytes | None]]:
    """Every complete event of a whole SSE body, parsed (a final event without its blank line counts)."""
    splitter = EventSplitter(limit=len(body) + 2)
    return [parse_event(event) for event in splitter.events(body + b"\n\n")]


def compact_token(payload: bytes, text: tuple[bytes, ...] = _TEXT_MARKERS,
                  objects: tuple[bytes, ...] = _OBJECT_MARKERS) -> bool:
    """True when a compact JSON chunk has a non-empty text delta or a tool/function call."""
    for marker in text:
        at = payload.find(marker)
        while at >= 0:
            if payload[at + len(marker):at + len(marker) + 1] != b'"':
                return True
            at = payload.find(marker, at + len(marker))
    return any(payload.find(marker) >= 0 for marker in objects)


def choice_has_token(choice: dict[str, Any]) -> bool:
    """A parsed chat/completions choice carries something the user sees."""
    text = choice.get("text")
    if isinstance(text, str) and text:
        return True
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    if any(isinstance(delta.get(k), str) and delta[k] for k in _STRING_DELTAS):
        return True
    return bool(delta.get("tool_calls") or delta.get("function_call") or delta.get("audio"))


@dataclass(slots=True)
class StreamInspector:
    clock: Callable[[], float]
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    gaps: array[float] = field(default_factory=lambda: array("d"))  # 8 bytes a token, not a float object's 32
    usage: Usage | None = None
    usage_events: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    model: str = ""
    done: bool = False
    error_event: bool = False
    content_chunks: int = 0
    _split: EventSplitter = field(default_factory=EventSplitter)
    _token: bool = False
    # The next chunk ``feed`` gets, proven free of ``"usage"`` keys by whoever made it (the usage stripper,
    # which removed them): ``feed`` does not search it again (issue 15: a 64 KiB block's two usage counts
    # were ~70 us). Only that very object is trusted, once. A field, not a method: set for every chunk of
    # a stream whose usage is hidden, where a call cost about what the search it saves does.
    vouched: bytes | None = None

    def feed(self, chunk: bytes) -> None:
        usage_free = chunk is self.vouched
        self.vouched = None
        split = self._split
        if split._tail or split._cr or not chunk.endswith(b"\n\n") or CR in chunk:
            block = split.feed(chunk)
            if not block:
                return
        else:  # the usual case: whole events with \n line ends, nothing held back, no copy
            block = chunk
        if block.startswith(b"data:") and block.find(b"\n") == len(block) - 2:  # one single-line event
            if not self._fast(block, usage_free):
                self._parse(block[5:].strip())
        elif not self._bulk(block, usage_free):
            for event in block.split(b"\n\n"):
                if event:
                    self._on_event(event)
        if self._token:  # at most one token per chunk: the gap is between chunks the client receives
            self._token = False
            now = self.clock()
            if self.first_token_at == 0.0:
                self.first_token_at = now
            else:
                self.gaps.append(now - self.last_token_at)
            self.last_token_at = now
            self.content_chunks += 1

    def _bulk(self, block: bytes, usage_free: bool = False) -> bool:
        """Many compact chat events in one chunk (a fast provider, a client reading slowly). Counted at C
        speed: each event is one ``data: `` line with one ``finish_reason``, null (no choice ends), every
        ``usage`` is null, no ``error`` and no ``[DONE]``; with the model known, the only thing left to
        learn is whether the chunk has a token (one counts per chunk), and its first event tells.
        ``usage_free``: the usage stripper proved the chunk has no ``"usage"`` key (``vouched``).
        False: look at each event. ~300 events in 64 KiB: 0.50 -> ~0.2 ms."""
        if not self.model or block.endswith(b"[DONE]\n\n"):  # a stream's first or last read: event by event
            return False
        events = one_line_events(block)
        if (events < _BULK_MIN_EVENTS or block.count(b'"finish_reason"') != events
                or block.count(b'"finish_reason":null') != events or block.find(b'"error"') >= 0
                or not usage_free and block.count(b'"usage"') != block.count(b'"usage":null')):
            return False
        return self._fast(block[:block.find(b"\n\n")], usage_free) and self._token

    def _on_event(self, event: bytes) -> None:
        if event.startswith(b"data:") and LF not in event:
            if not self._fast(event):
                self._parse(event[5:].strip())
            return
        name, payload = parse_event(event)
        if name == b"error":
            self.error_event = True
        if payload:
            self._parse(payload)

    def _parse(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict):
            self._on_object(obj)

    def _fast(self, line: bytes, usage_free: bool = False) -> bool:
        """Handle a one-line ``data:`` event from its bytes alone; False when it needs parsing.

        Proves "no finish, no usage, model known" from markers in compact JSON or in Python's default
        spacing (``": "``); anything else (other spacing, a finish or usage event, an error, ``[DONE]``)
        is left to the parser. A spaced event is only short-cut when a token marker proves its token.
        """
        if line.startswith(b'data: {"type":'):  # a Responses event, compact or spaced
            known = self._fast_responses(line)
            if known is not None:
                return known
        # The event's first finish_reason must be null and no other may follow: a finish before a null one
        # (two choices, the first ending) is an event to parse, not a token.
        end = line.find(b'"finish_reason"') + 15
        if end < 15:
            return False
        spaced = not line.startswith(b":null", end)
        if not spaced:
            end += 5
        elif line.startswith(b": null", end):
            end += 6
        else:
            return False
        if line.find(b'"finish_reason"', end) >= 0:
            return False  # a finish, several choices: parse
        at = -1 if usage_free else line.find(b'"usage"')
        if at >= 0 and (not line.startswith(b'"usage": null' if spaced else b'"usage":null', at)
                        or line.find(b'"usage"', at + 7) >= 0):
            return False
        if not self.model and line.find(b'"model"') >= 0:
            return False
        if spaced:
            if not compact_token(line, _SPACED_TEXT, _SPACED_OBJECT):
                return False  # no token proven in this spelling: the parser decides
            self._token = True
            return True
        at = line.find(b'"content":"')  # the usual chunk's token, proven here without a call (issue 21)
        if (at >= 0 and line[at + 11:at + 12] != b'"') or compact_token(line):
            self._token = True
        return True

    def _fast_responses(self, line: bytes) -> bool | None:
        """``_fast`` for a Responses event (None: not one in a spelling known here)."""
        start = 24 if line.startswith(_RESPONSES_PREFIX) else 25
        if start == 24 or line.startswith(_SPACED_RESPONSES_PREFIX):
            kind = line[start:line.find(b'"', start)]
            if kind.endswith(b".delta"):
                self._token = True
                return True
            return kind not in _RESPONSES_PARSED and line.find(b'"error"') < 0
        return None

    def _on_object(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if obj.get("error") is not None or kind in ("error", "response.failed"):
            self.error_event = True
        if isinstance(kind, str):
            if kind.endswith(".delta"):
                self._token = True
            elif kind in ("response.completed", "response.incomplete"):
                self.done = True
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    self._token = self._token or choice_has_token(choice)
                    reason = choice.get("finish_reason")
                    if isinstance(reason, str) and reason:
                        self.finish_reasons.append(reason)
        inner = obj.get("response")
        model = inner.get("model") if isinstance(inner, dict) else obj.get("model")
        if isinstance(model, str) and model and not self.model:
            self.model = model
        usage = usage_from_response_obj(obj)
        if usage is not None:
            self.usage = usage
            self.usage_events += 1

    @property
    def clean_end(self) -> bool:
        """True when the stream ended as a provider ends a complete answer."""
        return self.done and not self.error_event
