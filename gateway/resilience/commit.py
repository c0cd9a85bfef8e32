"""The commit point: read an upstream answer up to its first meaningful event, then replay it.

Retrying is only safe while the client has received nothing. A streamed answer
is committed when its first meaningful event arrives: content, a tool-call
delta, a finish or usage event, ``[DONE]``, or an error event. The role-only
first delta of a chat stream and the Responses API lifecycle events
(``response.created``, ``.in_progress``, ``.output_item.added``,
``.content_part.added``) are not meaningful: a provider that sends them and then
stalls or fails has given the client nothing, so the attempt can still be
retried or fail over. A non-stream body is committed by its first chunk.

Only the few events before the commit are scanned (regexes over a small
buffer); after it, ``Replay`` hands on the peeked chunks and then the rest of
the body unchanged, and nothing is parsed. The peek is bounded in bytes and
events so an unknown event format commits early instead of buffering.
"""
from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Literal


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
_FAST_TEXT = (b'"content":"', b'"reasoning_content":"', b'"refusal":"', b'"text":"', b'"reasoning":"')
_FAST_OTHER = (b'"tool_calls":[', b'"finish_reason":"', b'"usage":{', b'"function_call":{')


@dataclass(slots=True)
class Peek:
    """What was read before the commit point; ``chunks`` must reach the client unchanged."""

    chunks: list[bytes] = field(default_factory=list)
    verdict: Verdict = "commit"


def classify_event(event: bytes) -> EventKind:
    """Is this complete SSE event (without its blank line) meaningful, an error, or skippable?"""
    if event.startswith(b"data: ") and b"\n" not in event:
        payload, name = event[6:].strip(), b""
    else:
        payload, name = _split_event(event)
    if name == b"error":
        return "error"
    if not payload:
        return "skip"  # comments, keep-alives, an event name without data
    if payload == b"[DONE]":
        return "done"
    if (b"error" in payload or b'.failed"' in payload) and _ERROR.search(payload):
        return "error"
    if b'"response.' in payload and _LIFECYCLE.search(payload):
        return "skip"
    if b'"delta":{' in payload:
        return "meaningful" if _fast_payload(payload) else "skip"  # else: the role-only first delta
    if b'"delta"' in payload and _CHAT_DELTA.search(payload) and not _PAYLOAD.search(payload):
        return "skip"
    return "meaningful"


def _fast_payload(payload: bytes) -> bool:
    for marker in _FAST_TEXT:
        at = payload.find(marker)
        if at >= 0 and payload[at + len(marker):at + len(marker) + 1] != b'"':
            return True
    if any(marker in payload for marker in _FAST_OTHER):
        return True
    return b'": ' in payload and _PAYLOAD.search(payload) is not None  # spaced JSON: the slow, exact check


def _split_event(event: bytes) -> tuple[bytes, bytes]:
    data: list[bytes] = []
    name = b""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].strip())
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    return b"\n".join(data).strip(), name


async def peek(body: AsyncIterator[bytes], sse: bool) -> Peek:
    """Read ``body`` until the commit point. Exceptions from the body propagate to the caller.

    ``ended`` means the body finished before anything meaningful: for a stream that is
    a broken answer (no content, no ``[DONE]``); for a non-stream body an empty answer.
    """
    result = Peek()
    buffer = b""
    events = 0
    while True:
        try:
            chunk = await body.__anext__()
        except StopAsyncIteration:
            result.verdict = "ended"
            return result
        result.chunks.append(chunk)
        if not sse:
            return result
        buffer += chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
        while (cut := buffer.find(b"\n\n")) >= 0:
            event, buffer = buffer[:cut], buffer[cut + 2:]
            events += 1
            kind = classify_event(event)
            if kind == "error":
                result.verdict = "error_event"
                return result
            if kind != "skip":
                return result
        if events >= MAX_PEEK_EVENTS or sum(map(len, result.chunks)) >= MAX_PEEK_BYTES:
            return result  # not a format we know: commit rather than buffer


class Replay:
    """The body after the commit point: the peeked chunks, then the rest of the upstream body.

    A plain async iterator (not a generator): once the peeked chunks are out,
    ``__anext__`` hands out the upstream body's own awaitable, so the rest of a
    stream costs one method call per chunk and no extra frame; and ``aclose``
    always reaches the upstream body, even when iteration never started.
    """

    __slots__ = ("_head", "_body", "_ended")

    def __init__(self, head: list[bytes], body: AsyncIterator[bytes], ended: bool = False) -> None:
        self._head = head[::-1]
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
        try:
            await aclose()
        except Exception:  # the body already failed; that failure was handled where it happened
            pass
