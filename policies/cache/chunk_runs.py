"""Parse a streamed answer's chunk payloads, consecutive chunks that differ only in their text as one.

A long streamed answer is thousands of chunks that are byte for byte the same but for one text piece
(``{"id":"x",...,"delta":{"content":"<piece>"},...}``; OpenAI's also end with random padding, a second
hole). Parsing each one (an orjson call, a dict per chunk, and the assembly's Python per chunk) cost the
cache fill's thread ~4.5 µs a chunk: a 15,000-token answer held the GIL for ~70 ms beside the event loop
(issue 15). Here such a run is found with two byte comparisons per chunk, its pieces are decoded by one
orjson call, and the run becomes one chunk whose text is the pieces joined: for the assembly in
``canonical`` that is the same answer (``_plain`` says which chunks allow it).

Exactness. A template is learnt from a parsed chunk ``obj``: ``head`` is its bytes up to the text's
opening quote, ``tail`` its bytes from the closing quote (with padding: ``mid`` up to the padding's
opening quote, ``tail`` from its closing one). It is kept only if the template with sentinels in its holes
parses to ``obj`` with the sentinels as those strings, which proves each hole is exactly that string. A
chunk ``head + m + tail`` then parses to ``obj`` with ``m``'s string as its text whenever ``m`` is a
complete string body: JSON is read left to right, ``head`` leaves the reader inside that string, ``m``
leaves it there (no unescaped quote, no escape left open), and ``tail`` is read as before. The run's
pieces are decoded as ``["m1","m2",...]``: when no backslash stands before a separator's quote, those
``2 k`` quotes are unescaped, and ``k`` strings out of it need exactly ``2 k`` unescaped quotes: so a piece
has none, and each string is exactly one piece. Any doubt (a piece ending in a backslash, a bad escape,
invalid UTF-8, no ``mid`` found) and those chunks are parsed one by one, as before, with the same result
or error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

# Where each operation's text piece sits (chat: ``delta.content``; completions: ``text``).
_MARKERS = {"chat": b'"content":"', "completions": b'"text":"'}
# OpenAI's Chat Completions chunks carry random padding by default (``stream_options.include_obfuscation``):
# a top-level string after the choices that differs in every chunk. A template may have it as a second
# hole; the run keeps its last chunk's value (the last value wins, for any provider extra; the assembly
# leaves this one out of the answer).
_PADDING_KEY, _PADDING_MARKER = "obfuscation", b'"obfuscation":"'
_SENTINEL, _SENTINEL_TEXT = b"gw\\u0000run", "gw\x00run"
_SENTINEL_PAD, _SENTINEL_PAD_TEXT = b"gw\\u0000pad", "gw\x00pad"
_DECODE_PIECES = 2048  # pieces decoded by one orjson call (``_pieces``): ~0.2 ms holding the GIL
_BACKOFF = 32  # chunks parsed one by one after two templates in a row matched nothing


class Unfit(Exception):
    """A payload that is not a chunk of a streamed answer: the answer is not stored."""


def parse_chunk(payload: bytes) -> dict[str, Any]:
    """One chunk, as the fill accepts it (a JSON object without an error; a completed Response may carry
    ``error: null``-like fields)."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise Unfit from None
    if not isinstance(obj, dict) or obj.get("error") is not None and obj.get("type") != "response.completed":
        raise Unfit
    return obj


Split = tuple[bytes, bytes]  # a chunk's text piece and padding piece (b"" without padding), as JSON bytes


@dataclass(slots=True)
class _Template:
    head: bytes  # up to the text's opening quote
    mid: bytes  # from the text's closing quote to the padding's opening quote (b"": no padding hole)
    tail: bytes  # from the last hole's closing quote to the end
    obj: dict[str, Any]
    operation: str
    size: int = field(init=False)  # the length of a chunk with empty holes

    def __post_init__(self) -> None:
        self.size = len(self.head) + len(self.mid) + len(self.tail)

    def split(self, payload: bytes) -> Split | None:
        """The holes of a chunk that starts with ``head`` and ends with ``tail`` (None: no ``mid``)."""
        end = len(payload) - len(self.tail)
        if not self.mid:
            return payload[len(self.head):end], b""
        at = payload.rfind(self.mid, len(self.head), end)
        return None if at < 0 else (payload[len(self.head):at], payload[at + len(self.mid):end])

    def with_values(self, text: str, padding: str) -> dict[str, Any]:
        """A copy of ``obj`` with these holes (``obj`` itself is an event already)."""
        choice = self.obj["choices"][0]
        if self.operation == "chat":
            choice = {**choice, "delta": {**choice["delta"], "content": text}}
        else:
            choice = {**choice, "text": text}
        out = {**self.obj, "choices": [choice]}
        if self.mid:
            out[_PADDING_KEY] = padding
        return out

    def text_of(self, obj: dict[str, Any]) -> Any:
        choice = obj["choices"][0]
        return choice["delta"].get("content") if self.operation == "chat" else choice.get("text")


def _plain(operation: str, obj: dict[str, Any]) -> bool:
    """Chunks like ``obj`` that differ only in their text assemble like one chunk with the texts joined:
    one choice, its text a string, no logprobs (their lists extend), and in a chat delta no other
    value that accumulates (strings other than ``role`` concatenate, lists extend). Everything else in a
    chunk (head fields, finish reason, usage, provider extras) is taken as the same value every time."""
    choices = obj.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return False
    choice = choices[0]
    if isinstance(choice.get("logprobs"), dict):
        return False
    if operation == "completions":
        return isinstance(choice.get("text"), str)
    delta = choice.get("delta")
    if not isinstance(delta, dict) or not isinstance(delta.get("content"), str):
        return False
    return all(key in ("content", "role") or value is None or not isinstance(value, (str, list))
               for key, value in delta.items())


def _string_end(payload: bytes, start: int) -> int:
    """Index of the quote closing the JSON string that starts at ``start`` (-1 if none)."""
    at = payload.find(b'"', start)
    while at >= 0:
        slashes = 0
        while payload[at - 1 - slashes] == 0x5C:  # a backslash
            slashes += 1
        if slashes % 2 == 0:
            return at
        at = payload.find(b'"', at + 1)
    return -1


def _learn(operation: str, payload: bytes, obj: dict[str, Any]) -> _Template | None:
    marker = _MARKERS.get(operation)
    if marker is None or not _plain(operation, obj):
        return None
    start = payload.find(marker) + len(marker)
    end = _string_end(payload, start) if start >= len(marker) else -1
    if end < 0:
        return None
    padding = obj.get(_PADDING_KEY)
    if isinstance(padding, str):  # its hole must come after the text's
        pad_start = payload.find(_PADDING_MARKER, end) + len(_PADDING_MARKER)
        pad_end = _string_end(payload, pad_start) if pad_start >= len(_PADDING_MARKER) else -1
        if pad_end < 0:
            return None
        template = _Template(payload[:start], payload[end:pad_start], payload[pad_end:], obj, operation)
        probe_bytes = template.head + _SENTINEL + template.mid + _SENTINEL_PAD + template.tail
    else:
        padding = ""
        template = _Template(payload[:start], b"", payload[end:], obj, operation)
        probe_bytes = template.head + _SENTINEL + template.tail
    try:
        probe = orjson.loads(probe_bytes)
    except orjson.JSONDecodeError:
        return None
    if (not isinstance(probe, dict) or not _plain(operation, probe)
            or template.text_of(probe) != _SENTINEL_TEXT
            or template.mid and probe.get(_PADDING_KEY) != _SENTINEL_PAD_TEXT):
        return None
    # The probe with the chunk's own values back is the chunk: each hole is exactly that string.
    back = _Template(template.head, template.mid, template.tail, probe, operation)
    return template if back.with_values(template.text_of(obj), padding) == obj else None


def _pieces(pieces: list[bytes]) -> list[str] | None:
    """The pieces decoded, ``_DECODE_PIECES`` at a time, or None unless each is exactly one string body.
    In batches: a 15,000-token answer's 30,000 pieces (text and padding, 275 KB) in one orjson call held
    the GIL for 1.3-4.8 ms in the cache fill's thread, a stall of the event loop beside it (issue 15)."""
    if not pieces:
        return None
    texts: list[str] = []
    for at in range(0, len(pieces), _DECODE_PIECES):
        batch = _decoded(pieces[at:at + _DECODE_PIECES])
        if batch is None:
            return None
        texts.extend(batch)
    return texts


def _decoded(pieces: list[bytes]) -> list[str] | None:
    """The pieces decoded by one orjson call, or None unless each is exactly one string body."""
    blob = b'["' + b'","'.join(pieces) + b'"]'
    if b'\\","' in blob or blob.endswith(b'\\"]'):  # a separator's quote might be escaped: in doubt
        return None
    try:
        texts = orjson.loads(blob)
    except orjson.JSONDecodeError:
        return None
    # No separator quote is escaped, so k strings out used all 2 k of them and no quote of a piece:
    # each string is exactly one piece.
    if not isinstance(texts, list) or len(texts) != len(pieces) or not all(type(t) is str for t in texts):
        return None
    return texts


def parse_chunks(operation: str, payloads: list[bytes]) -> list[dict[str, Any]]:
    """Every payload parsed (``Unfit`` at the first that is not a chunk), each run of chunks that differ
    only in their text as one chunk with the texts joined."""
    parser = _Parser(operation)
    run = parser.run
    for payload in payloads:
        template = parser.template  # the match inlined: this loop runs once per chunk of a long answer
        if template is None and parser.held is not None:
            template = parser.learn_for(payload)
        if (template is not None and len(payload) >= template.size and payload.startswith(template.head)
                and payload.endswith(template.tail)):
            run.append(payload)
        else:
            parser.add(payload)
            run = parser.run
    parser.flush()
    return parser.events


class _Parser:
    __slots__ = ("operation", "learns", "events", "template", "run", "misses", "skip", "held")

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.learns = operation in _MARKERS
        self.events: list[dict[str, Any]] = []
        self.template: _Template | None = None
        self.run: list[bytes] = []
        self.misses = 0  # templates in a row that matched no chunk
        self.skip = 0  # chunks left to parse without learning
        self.held: tuple[bytes, dict[str, Any]] | None = None  # the chunk to learn from, once the next comes

    def add(self, payload: bytes) -> None:
        """A chunk that is not in the current run: parsed, and held to learn a template from when the next
        chunk may continue it (``learn_for``)."""
        template = self.template
        matched = self.flush()
        obj = parse_chunk(payload)
        self.events.append(obj)
        if not self.learns:
            return
        if template is not None:  # this chunk ended the template's use
            self.misses = 0 if matched else self.misses + 1
        self.template = self.held = None
        if self.skip > 0:
            self.skip -= 1
        elif self.misses >= 2:  # chunks that differ in more than their text (a per-chunk field)
            self.misses, self.skip = 0, _BACKOFF
        else:
            self.held = payload, obj

    def learn_for(self, payload: bytes) -> _Template | None:
        """The held chunk's template, learnt only when ``payload`` starts as that chunk does up to its text:
        else the template could not match it, and its learning (a probe parsed) would be lost. A short
        answer learns once, not three times (its role and finish chunks start no run; issue 21)."""
        held, self.held = self.held, None
        assert held is not None
        chunk, obj = held
        marker = _MARKERS[self.operation]
        start = chunk.find(marker)
        if start < 0 or not payload.startswith(chunk[:start + len(marker)]):
            return None
        self.template = _learn(self.operation, chunk, obj)
        return self.template

    def flush(self) -> bool:
        """The run so far as one chunk; whether there was one."""
        run, template = self.run, self.template
        if not run or template is None:
            return False
        self.run = []
        splits = [template.split(payload) for payload in run]
        if None not in splits and self._merged(template, splits):  # the usual case: the run at once
            return True
        # In doubt: the chunks with no middle or a piece ending in a backslash one by one, the others in
        # runs between them
        start = 0
        for at, split in enumerate(splits):
            if split is None or split[0].endswith(b"\\") or split[1].endswith(b"\\"):
                self._merge(template, run[start:at], splits[start:at])
                self.events.append(parse_chunk(run[at]))
                start = at + 1
        self._merge(template, run[start:], splits[start:])
        return True

    def _merge(self, template: _Template, run: list[bytes], splits: list[Split | None]) -> None:
        """``run`` as one chunk, or one by one if its pieces are still in doubt (a bad escape)."""
        if run and not self._merged(template, splits):
            self.events.extend(parse_chunk(payload) for payload in run)

    def _merged(self, template: _Template, splits: list[Split | None]) -> bool:
        """The run of these pieces added as one chunk, if they decode as one string each."""
        values = _values(splits, bool(template.mid))
        if values is not None:
            self.events.append(template.with_values(*values))
        return values is not None


def _values(splits: list[Split | None], padded: bool) -> tuple[str, str] | None:
    """The run's text (its pieces joined) and its last padding, decoded in one call; None in doubt."""
    pieces = [piece for split in splits if split is not None for piece in (split if padded else split[:1])]
    texts = _pieces(pieces)
    if texts is None:
        return None
    return ("".join(texts[0::2]), texts[-1]) if padded else ("".join(texts), "")
