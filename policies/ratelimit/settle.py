"""Estimate a request's cost before the call, and settle its reservation when the answer ends.

The estimate is the prompt (counted once per request by ``gateway.tokens.prompt``
and shared with every other feature) plus the largest output limit the
request names, or a configured default. The settlement happens in the
response body's wrapper, so a concurrency slot is held until the stream has
really ended, not until the handler returned the first byte:

- the body ends cleanly, fails mid-stream, is cancelled by a client that went
  away, or is closed without being read (a retry discarding an attempt): all
  settle exactly once;
- the cost is the provider's usage when it reported one (``ex.usage`` set by
  the usage policy, the stream inspector, or the tail of a JSON body); a
  stream cut short without usage is charged its prompt plus the content
  chunks already produced (about one token each); an error answer costs no
  tokens (its request still counted against ``rpm``).
"""
from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.appstate import AppState
from gateway.exchange import Exchange
from gateway.tokens.prompt import prompt_tokens
from gateway.usage import usage_from_json_bytes
from policies.ratelimit.runtime import Grant, RateLimiter

_TAIL = 4096  # bytes of a JSON body searched for its usage object
COUNTED = "rate_limit.counted"  # ex.attrs: the request's tokens are already in gateway_tokens_reserved_total


def estimate(st: AppState, ex: Exchange, default_output: int) -> tuple[int, int]:
    """(prompt tokens, tokens to reserve) for ``ex``; embeddings produce no output."""
    prompt = prompt_tokens(st, ex)
    if ex.body is None or ex.operation == "embeddings":
        return prompt, prompt
    limit = st.tokenizer.max_output_tokens(ex.body)
    output = limit if limit is not None else default_output
    choices = ex.body.get("n")
    if type(choices) is int and choices > 1:  # every choice may produce the whole output limit
        output *= choices
    return prompt, prompt + output


def used_tokens(ex: Exchange, grant: Grant, status: int, tail: bytes) -> int:
    """What the answer cost, as well as the gateway can tell (see the module docstring)."""
    if status >= 400:
        return 0
    usage = ex.usage
    inspector = ex.attrs.get("inspector")
    if usage is None and inspector is not None:
        usage = inspector.usage
    if usage is None and tail:
        usage = usage_from_json_bytes(tail)
    if usage is not None and (usage.prompt or usage.completion):
        return usage.total
    if inspector is not None:
        return grant.prompt + inspector.content_chunks
    return grant.tokens


class SettlingBody:
    """The answer's body, unchanged, settling ``grant`` when it ends however it ends."""

    __slots__ = ("_ex", "_grant", "_inner", "_keep_tail", "_limiter", "_status", "_tail")

    def __init__(self, inner: AsyncIterator[bytes], ex: Exchange, limiter: RateLimiter, grant: Grant, status: int,
                 sse: bool) -> None:
        self._inner = inner
        self._ex = ex
        self._limiter = limiter
        self._grant = grant
        self._status = status
        self._keep_tail = not sse and status < 400 and grant.tokens > 0
        self._tail: list[bytes] = []  # references to the last chunks, joined only at the end

    def __aiter__(self) -> SettlingBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._inner.__anext__()
        except BaseException:  # the end, clean (StopAsyncIteration) or not
            self._end()
            raise
        if self._keep_tail:
            self._tail.append(chunk)
            if len(self._tail) > 3:
                del self._tail[0]
        return chunk

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._inner, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._end()

    def _end(self) -> None:
        if not self._grant.settled:
            tail = b"".join(c[-_TAIL:] for c in self._tail)[-_TAIL:] if self._tail else b""
            self._limiter.settle(self._grant, used_tokens(self._ex, self._grant, self._status, tail))
