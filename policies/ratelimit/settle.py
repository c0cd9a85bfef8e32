"""Estimate a request's cost before the call, and settle its reservation when the answer ends.

The estimate is the prompt (counted once per request by ``gateway.tokens.prompt``
and shared with every other feature) plus the largest output limit the
request names, or a configured default. The settlement happens in the
response body's wrapper, so a concurrency slot is held until the stream has
really ended, not until the handler returned the first byte:

- the body ends cleanly, fails mid-stream, is cancelled by a client that went
  away, or is closed without being read (a retry discarding an attempt): all
  settle exactly once;
- the cost is the provider's usage when it reported one (``ex.record.reported_usage`` set by
  the usage policy, the stream inspector, or the tail of a JSON body); a
  stream cut short without usage is charged its prompt plus the content
  chunks already produced (about one token each); an error answer costs no
  tokens (its request still counted against ``rpm``).
"""
from __future__ import annotations

from gateway.appstate import AppState
from gateway.body import Body, Observed
from gateway.exchange import Exchange, StateKey
from gateway.tokens.prompt import prompt_tokens
from gateway.usage import usage_from_json_bytes
from policies.ratelimit.runtime import Grant, RateLimiter

_TAIL = 4096  # bytes of a JSON body searched for its usage object
# the request's tokens are in gateway_tokens_reserved_total
COUNTED: StateKey[bool] = StateKey("rate_limit.counted")


def estimate(st: AppState, ex: Exchange, default_output: int) -> tuple[int, int]:
    """(prompt tokens, tokens to reserve) for ``ex``; embeddings produce no output."""
    prompt = prompt_tokens(st, ex)
    if ex.body is None or ex.request.operation == "embeddings":
        return prompt, prompt
    limit = st.tokenizer.max_output_tokens(ex.body)
    output = limit if limit is not None else default_output
    choices = ex.body.get("n")
    if type(choices) is int and choices > 1:  # every choice may produce the whole output limit
        output *= choices
    return prompt, prompt + output


def used_tokens(ex: Exchange, grant: Grant, status: int, tail: bytes, clean: bool = False) -> int:
    """What the answer cost, as well as the gateway can tell (see the module docstring).

    A usage read from the tail of a complete (``clean``) 2xx JSON answer is the provider's figure for this
    request: it goes into ``ex.record.reported_usage`` at once, so the other settlements and the relay do
    not search the same bytes again (the relay reads the same suffix of the same answer)."""
    if status >= 400:
        return 0
    usage = ex.record.reported_usage
    inspector = ex.view
    if usage is None and inspector is not None:
        usage = inspector.usage
    if usage is None and tail:
        usage = usage_from_json_bytes(tail)
        if usage is not None and clean and status < 300:
            ex.record.reported_usage = usage
    if usage is not None and (usage.prompt or usage.completion):
        return usage.total
    if inspector is not None:
        return grant.prompt + inspector.content_chunks
    return grant.tokens


def settling(body: Body, ex: Exchange, limiter: RateLimiter, grant: Grant, status: int, sse: bool) -> Body:
    """``body``, unchanged, settling ``grant`` exactly once when it ends however it ends."""
    keep_tail = not sse and status < 400 and grant.tokens > 0
    tail: list[bytes] = []  # references to the last chunks, joined only at the end

    def on_chunk(chunk: bytes) -> bytes:
        tail.append(chunk)
        if len(tail) > 3:
            del tail[0]
        return chunk

    def on_end(error: BaseException | None) -> None:
        if not grant.settled:
            data = b"".join(c[-_TAIL:] for c in tail)[-_TAIL:] if tail else b""
            limiter.settle(grant, used_tokens(ex, grant, status, data, clean=error is None))

    return Observed(body, on_chunk=on_chunk if keep_tail else None, on_end=on_end)
