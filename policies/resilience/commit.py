"""The commit point: read an upstream answer up to its first meaningful event, then replay it.

Retrying is only safe while the client has received nothing. A streamed answer
is committed when its first meaningful event arrives: content, a tool-call
delta, a finish or usage event, ``[DONE]``, or an error event. The role-only
first delta of a chat stream and the Responses API lifecycle events
(``response.created``, ``.in_progress``, ``.output_item.added``,
``.content_part.added``) are not meaningful: a provider that sends them and then
stalls or fails has given the client nothing, so the attempt can still be
retried or fail over. A non-stream body is committed by its first chunk.

Only the few events before the commit are scanned (byte searches; regexes only
for unusual shapes), never parsed as JSON; after it, ``Replay`` hands on the
peeked chunks and then the rest of the body unchanged, and nothing is looked
at. The peek is bounded in bytes and events so an unknown event format commits
early instead of buffering.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from gateway.sse import LF, EventSplitter, parse_event

MAX_PEEK_BYTES = 64 * 1024
MAX_PEEK_EVENTS = 32

Verdict = Literal["commit", "error_event", "ended"]
EventKind = Literal["skip", "meaningful", "error", "done"]

_ERROR = re.compile(rb'^\{\s*"error"\s*:|"type"\s*:\s*"(?:error|response\.failed)"')
_LIFECYCLE = re.compile(
    rb'"type"\s*:\s*"response\.(?:created|in_progress|queued|output_item\.added|content_part\.added)"')
_CHAT_DELTA = re.compile(rb'"delta"\s*:\s*\{')
_PAYLOAD = re.compile(
    rb'"(?:content|text|reasoning_content|reasoning|refusal)"\s*:\s*"[^"]'
    rb'|"(?:tool_calls|function_call|audio)"\s*:\s*[\[{]'
    rb'|"finish_reason"\s*:\s*"'
    rb'|"usage"\s*:\s*\{')
# The compact form every major provider sends, checked with plain byte searches first;
# the regexes above only run for rarer shapes (spaces after colons, errors, Responses API).
_FAST_TEXT = (b'"reasoning_content":"', b'"reasoning":"', b'"refusal":"', b'"text":"')
_FAST_OTHER = (b'"tool_calls":[', b'"finish_reason":"', b'"usage":{', b'"function_call":{')


@dataclass(slots=True)
class Peek:
    """What was read before the commit point; ``chunks`` must reach the client unchanged."""

    chunks: list[bytes] = field(default_factory=list)
    verdict: Verdict = "commit"


def classify_event(event: bytes) -> EventKind:
    """Is this complete SSE event (without its blank line) meaningful, an error, or skippable?"""
    if event.startswith(b"data: ") and LF not in event:
        payload, name = event[6:].strip(), b""
    else:
        name, data = parse_event(event)
        payload = data or b""
    delta = payload.find(b'"delta":{') if not name else -1
    if delta >= 0:  # a compact chat chunk: the hot case, decided with a few byte searches
        return "meaningful" if _delta_has_payload(payload, delta) else "skip"
    if name == b"error":
        return "error"
    if not payload:
        return "skip"  # comments, keep-alives, an event name without data
    if payload == b"[DONE]":
        return "done"
    if (payload.find(b"error") >= 0 or payload.find(b'.failed"') >= 0) and _ERROR.search(payload):
        return "error"
    if payload.find(b'"response.') >= 0 and _LIFECYCLE.search(payload):
        return "skip"
    if payload.find(b'"delta"') >= 0 and _CHAT_DELTA.search(payload) and not _PAYLOAD.search(payload):
        return "skip"  # a spaced chat chunk with nothing in its delta
    return "meaningful"


def _delta_has_payload(payload: bytes, start: int) -> bool:
    at = payload.find(b'"content":"', start)
    if at >= 0 and payload[at + 11:at + 12] != b'"':
        return True  # the common content chunk: two searches
    for marker in _FAST_TEXT:
        at = payload.find(marker)
        if at >= 0 and payload[at + len(marker):at + len(marker) + 1] != b'"':
            return True
    for marker in _FAST_OTHER:
        if payload.find(marker) >= 0:  # not ``in``: see ``gateway.sse.CR``
            return True
    return False


async def peek(body: AsyncIterator[bytes], sse: bool, deadline: float | None = None,
               clock: Callable[[], float] | None = None) -> Peek:
    """Read ``body`` until the commit point. Exceptions from the body propagate to the caller.

    ``deadline`` (on ``clock``) bounds the reads after the first one: past it,
    ``TimeoutError``. The first read needs no timer of ours (the upstream client bounds
    it by the same first-byte deadline), so the timer is only armed when a stream's
    first chunk was not yet meaningful (typically the role-only delta before the
    first token).
    ``ended`` means the body finished before anything meaningful: for a stream that is
    a broken answer (no content, no ``[DONE]``); for a non-stream body an empty answer.
    """
    result = Peek()
    scan = _Scan() if sse else None
    try:  # the first read inline (``_read``'s body): a non-stream answer is committed by it, no coroutine
        chunk = await body.__anext__()
    except StopAsyncIteration:
        result.verdict = "ended"
        return result
    if _took(chunk, result, scan):
        return result
    del chunk
    if deadline is None:
        while not await _read(body, result, scan):
            pass
        return result
    now = (clock or asyncio.get_running_loop().time)()
    async with asyncio.timeout(max(0.0, deadline - now)):
        while not await _read(body, result, scan):
            pass
    return result


async def _read(body: AsyncIterator[bytes], result: Peek, scan: _Scan | None) -> bool:
    """Read one chunk; True once the commit point (or the end) is reached."""
    try:
        chunk = await body.__anext__()
    except StopAsyncIteration:
        result.verdict = "ended"
        return True
    return _took(chunk, result, scan)


def _took(chunk: bytes, result: Peek, scan: _Scan | None) -> bool:
    """Keep one chunk read; True once the commit point is reached."""
    result.chunks.append(chunk)
    if scan is None:
        return True  # a non-stream body is committed by its first chunk
    verdict = scan.feed(chunk)
    if verdict is None:
        return False
    result.verdict = verdict
    return True


class _Scan:
    """Reassembles SSE events across chunks and classifies each complete one."""

    __slots__ = ("events", "size", "split")

    def __init__(self) -> None:
        self.split = EventSplitter(limit=MAX_PEEK_BYTES + 1)
        self.events = 0
        self.size = 0

    def feed(self, chunk: bytes) -> Verdict | None:
        self.size += len(chunk)
        for event in self.split.events(chunk):  # any line end, events split anywhere
            self.events += 1
            kind = classify_event(event)
            if kind == "error":
                return "error_event"
            if kind != "skip":
                return "commit"
        if self.events >= MAX_PEEK_EVENTS or self.size >= MAX_PEEK_BYTES:
            return "commit"  # not a format we know: commit rather than buffer
        return None


class Replay:
    """The body after the commit point: the peeked chunks, then the rest of the upstream body.

    The peeked chunks come out as one: they are all in hand, and a stream's are typically the
    role-only delta and the first token, which would otherwise reach the client in two writes
    (issue 21: one syscall and one client wake-up less before the first token). The bytes are
    the same; SSE readers split events anywhere.

    A plain async iterator (not a generator): once the peeked chunks are out,
    ``__anext__`` hands out the upstream body's own awaitable, so the rest of a
    stream costs one method call per chunk and no extra frame; and ``aclose``
    always reaches the upstream body, even when iteration never started.
    """

    __slots__ = ("_body", "_ended", "_head")

    def __init__(self, head: list[bytes], body: AsyncIterator[bytes], ended: bool = False) -> None:
        self._head = [b"".join(head)] if len(head) > 1 else list(head)
        self._body = body
        self._ended = ended

    def __aiter__(self) -> Replay:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        if self._head:
            return _ready(self._head.pop())
        if self._ended:
            return _stop()
        return self._body.__anext__()

    async def aclose(self) -> None:
        self._head.clear()
        await close_body(self._body)


async def _ready(chunk: bytes) -> bytes:
    return chunk


async def _stop() -> bytes:
    raise StopAsyncIteration


async def close_body(body: AsyncIterator[bytes]) -> None:
    """Close a body we will not read further; closing releases (or closes) its connection."""
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):  # the body already failed; that was handled where it happened
            await aclose()
