"""Recognise a provider's "prompt too long" 400 so the retry policy can send it to a larger model.

Only the route's ``context_fallbacks`` make this matter: the 400's body (small, JSON) is
read in full, classified, and handed on as a replayable body whatever it says, so a 400
that is something else still reaches the client byte for byte.
"""
from __future__ import annotations

import asyncio

import orjson

from gateway.exchange import UpstreamResponse
from policies.resilience.commit import Replay, close_body

MAX_ERROR_BYTES = 64 * 1024
# Phrases providers put in the message when the error body has no (or another) code.
_PHRASES = (b"maximum context length", b"context_length_exceeded", b"context window", b"prompt is too long")


async def read_error(resp: UpstreamResponse, timeout_s: float) -> tuple[bool, UpstreamResponse]:
    """(is it context_length_exceeded?, the same answer with a body that replays what was read)."""
    chunks: list[bytes] = []
    size = 0
    ended = False
    try:
        async with asyncio.timeout(max(0.0, timeout_s)):
            async for chunk in resp.body:
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_ERROR_BYTES:
                    break
            else:
                ended = True
    except (TimeoutError, Exception):
        await close_body(resp.body)
        ended = True
    replay = Replay(chunks, resp.body, ended=ended)
    same = UpstreamResponse(resp.status, resp.headers, replay, resp.source, resp.upstream)
    return is_context_exceeded(b"".join(chunks)), same


def is_context_exceeded(raw: bytes) -> bool:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return False
    if error.get("code") == "context_length_exceeded":
        return True
    message = error.get("message")
    return isinstance(message, str) and any(p in message.lower().encode() for p in _PHRASES)
