"""Answer a request from a cached answer, in the request's own mode.

A non-stream request gets the stored JSON body as is; a streamed one gets the
SSE replay (rendered once per entry and per "usage chunk or not", then
memoised). The exchange record says where the answer came from
(``source = "cache"``, ``cache_result``), carries the original usage, and the
client sees ``x-gateway-cache``, ``age`` and the tokens the hit saved.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from gateway.body import Body, Observed, OneChunk
from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.entry import CachedAnswer
from policies.cache.replay import render_sse

SSE_TYPE = "text/event-stream; charset=utf-8"
TOKENS_SAVED_HEADER = "x-gateway-cache-tokens-saved"


def wants_usage_chunk(ex: Exchange) -> bool:
    opts = ex.body.get("stream_options") if ex.body is not None else None
    return isinstance(opts, dict) and opts.get("include_usage") is True


def replay_bytes(ex: Exchange, answer: CachedAnswer) -> tuple[bytes, str]:
    if not ex.request.stream or answer.operation not in ("chat", "completions", "responses"):
        return answer.body, answer.content_type
    include_usage = wants_usage_chunk(ex) if answer.operation != "responses" else True
    return answer.sse(include_usage, render_sse), SSE_TYPE


def cached_response(ex: Exchange, answer: CachedAnswer, result: str,
                    clock: Callable[[], float]) -> UpstreamResponse:
    """The response for a hit; ``result`` is ``hit`` or ``semantic-hit``."""
    data, content_type = replay_bytes(ex, answer)
    age = max(0, int(time.time() - answer.created))
    headers = ex.response_headers
    headers["x-gateway-cache"] = result
    headers["age"] = str(age)
    headers[TOKENS_SAVED_HEADER] = str(answer.tokens)
    ex.record.cache_result = result
    ex.record.source = "cache"
    if answer.usage is not None:
        ex.record.reported_usage = replace(answer.usage)
    return UpstreamResponse(status=200, headers={"content-type": content_type}, body=_once(ex, data, clock),
                            source="cache")


def _once(ex: Exchange, data: bytes, clock: Callable[[], float]) -> Body:
    """The replayed answer; its first byte (the whole answer) is the hit's first token."""

    def first(chunk: bytes) -> bytes:
        ex.record.first_token_at = clock()
        return chunk

    return Observed(OneChunk(data), on_chunk=first)
