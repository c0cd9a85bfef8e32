"""`POST /v1/chat/completions`, shaped like OpenAI's so the official SDK parses it.

The answer (text or tool calls) is planned once and then rendered either as a
single `chat.completion` object or as `chat.completion.chunk` events, so the
streamed and non-streamed answers to the same request are identical.
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .context import RequestContext
from .errors import MockHTTPError
from .generate import (
    NATURAL_MAX_TOKENS,
    ToolCallPlan,
    completion_length,
    content_text,
    derive_seed,
    estimate_prompt_tokens,
    last_user_text,
    plan_tool_calls,
    text_pieces,
)
from .stream import DONE_FRAME, SSEEvent, send_json, sse_frame, stream_events

SYSTEM_FINGERPRINT = "fp_mock0001"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatPlan:
    """Everything about the answer except its wire format."""

    id: str
    created: int
    model: str
    pieces: tuple[str, ...]
    tool_calls: tuple[ToolCallPlan, ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


def cached_prefix_tokens(ctx: RequestContext, messages: list[dict[str, Any]]) -> int:
    """Tokens of the longest leading messages this instance saw before (then remembers this prompt's)."""
    cache, floor = ctx.prompt_cache, ctx.cfg.prompt_cache_min_tokens
    if cache is None or floor <= 0:
        return 0
    texts = [content_text(m.get("content")) for m in messages]
    digests = [derive_seed(0, messages[:i]).to_bytes(8, "big") for i in range(1, len(messages))]
    cached = 0
    for i in range(len(digests), 0, -1):
        if digests[i - 1] in cache:
            cached = estimate_prompt_tokens(texts[:i])
            break
    for i, digest in enumerate(digests, start=1):
        if estimate_prompt_tokens(texts[:i]) >= floor:
            cache.add(digest)
    return cached if cached >= floor else 0


def chat_usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise MockHTTPError(400, "'messages' must be a non-empty array of message objects.", param="messages")
    return messages


def chat_prompt_tokens(body: Any) -> int:
    """Prompt estimate used both for usage and for the token quota."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return 1
    return estimate_prompt_tokens(
        [content_text(m.get("content")) if isinstance(m, dict) else "" for m in messages]
    )


def chat_request_tokens(body: Any, default_tokens: int) -> int:
    """Tokens a chat request reserves against TPM: prompt + the completion it may produce."""
    limit = None
    if isinstance(body, dict):
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
    return chat_prompt_tokens(body) + (limit if isinstance(limit, int) else default_tokens)


def _prefill(body: dict[str, Any], messages: list[dict[str, Any]]) -> str | None:
    """The text of a final assistant message to continue (prefill, vLLM ``continue_final_message``)."""
    last = messages[-1]
    if last.get("role") != "assistant" or last.get("tool_calls") or len(messages) < 2:
        return None
    text = content_text(last.get("content"))
    return text or None


def continued_pieces(seed: int, prefill: str, max_tokens: int | None,
                     default: int) -> tuple[tuple[str, ...], bool]:
    """The rest of the answer ``prefill`` began: the same pieces the unbroken answer has after it.

    ``max_tokens`` counts the continuation's tokens (as providers do); without it the whole answer
    is the default length. A prefill that is not a prefix of this answer gets a fresh answer.
    """
    pieces = text_pieces(seed, NATURAL_MAX_TOKENS)
    done, k = "", 0
    while len(done) < len(prefill) and k < len(pieces):
        done += pieces[k]
        k += 1
    if done != prefill:
        return tuple(pieces[:default]), False
    total = k + max_tokens if max_tokens is not None else max(default, k)
    return tuple(pieces[k:total]), max_tokens is not None and total <= NATURAL_MAX_TOKENS


def plan_chat(ctx: RequestContext) -> ChatPlan:
    body = ctx.json_body()
    model = ctx.require_model()
    messages = _messages(body)
    max_tokens = ctx.optional_int("max_completion_tokens", "max_tokens")
    prefill = _prefill(body, messages)
    if prefill is not None:
        if ctx.fault.reject_prefill:
            raise MockHTTPError(400, "This model does not support assistant message prefill: the "
                                "conversation must end with a user message.", param="messages")
        return _plan_continuation(ctx, body, model, messages, prefill, max_tokens)
    seed = derive_seed(ctx.cfg.seed, messages)
    calls = plan_tool_calls(
        seed=seed,
        tools=body.get("tools"),
        tool_choice=body.get("tool_choice"),
        last_user=last_user_text(messages),
        header_count=ctx.tool_calls_header,
    )
    if calls:
        pieces: tuple[str, ...] = ()
        completion_tokens = sum(len(c.pieces) for c in calls)
        finish = "tool_calls"
    else:
        n, hit_limit = completion_length(
            max_tokens=max_tokens, default_tokens=ctx.cfg.default_tokens, header_tokens=ctx.header_tokens
        )
        pieces = tuple(text_pieces(seed, n))
        completion_tokens = n
        finish = "length" if hit_limit else "stop"
    return ChatPlan(
        id="chatcmpl-" + secrets.token_hex(12),
        created=int(time.time()),
        model=model,
        pieces=pieces,
        tool_calls=tuple(calls),
        finish_reason=finish,
        prompt_tokens=chat_prompt_tokens(body),
        completion_tokens=completion_tokens,
        cached_tokens=cached_prefix_tokens(ctx, messages),
    )


def _plan_continuation(ctx: RequestContext, body: dict[str, Any], model: str, messages: list[dict[str, Any]],
                       prefill: str, max_tokens: int | None) -> ChatPlan:
    seed = derive_seed(ctx.cfg.seed, messages[:-1])  # the answer the conversation without the prefill gets
    pieces, hit_limit = continued_pieces(seed, prefill, max_tokens, ctx.cfg.default_tokens)
    return ChatPlan(
        id="chatcmpl-" + secrets.token_hex(12), created=int(time.time()), model=model, pieces=pieces,
        tool_calls=(), finish_reason="length" if hit_limit else "stop",
        prompt_tokens=chat_prompt_tokens(body), completion_tokens=len(pieces),
    )


async def handle_chat(ctx: RequestContext) -> web.StreamResponse:
    plan = plan_chat(ctx)
    if ctx.wants_stream():
        return await stream_events(ctx, chat_stream_events(plan, include_usage=ctx.include_usage(),
                                                           padded=ctx.include_obfuscation()))
    return await send_json(
        ctx, chat_completion_body(plan, with_usage=not ctx.no_usage), n_tokens=plan.completion_tokens
    )


def chat_completion_body(plan: ChatPlan, *, with_usage: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
    if plan.tool_calls:
        message["tool_calls"] = [
            {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in plan.tool_calls
        ]
    else:
        message["content"] = "".join(plan.pieces)
    body: dict[str, Any] = {
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "service_tier": "default",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}],
    }
    if with_usage:
        body["usage"] = chat_usage(plan.prompt_tokens, plan.completion_tokens, plan.cached_tokens)
    return body


_PADDING = "kQ7vXa2LmZ9pRt4WbN3c"


def chat_stream_events(plan: ChatPlan, *, include_usage: bool, padded: bool = False) -> list[SSEEvent]:
    """Role chunk, content (or tool-call) deltas, finish chunk, optional usage chunk, [DONE]. ``padded``:
    each delta chunk ends with OpenAI's ``obfuscation`` padding (random characters of varying length, on
    unless ``stream_options.include_obfuscation`` is false); here derived from the chunk's position."""
    serial = itertools.count()

    def chunk(delta: dict[str, Any] | None, finish: str | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": plan.id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "service_tier": "default",
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            usage = chat_usage(plan.prompt_tokens, plan.completion_tokens, plan.cached_tokens)
            obj["usage"] = usage if delta is None else None
        if padded and delta is not None:
            n = next(serial)
            obj["obfuscation"] = _PADDING[n % 7: n % 7 + 1 + (n * 5) % 11]
        return sse_frame(obj)

    role = {"role": "assistant", "content": None if plan.tool_calls else ""}
    events = [SSEEvent(chunk(role))]
    events += [SSEEvent(chunk({"content": piece}), content=True) for piece in plan.pieces]
    for call in plan.tool_calls:
        events += [SSEEvent(chunk(d), content=True) for d in _tool_call_deltas(call)]
    events.append(SSEEvent(chunk({}, plan.finish_reason)))
    if include_usage:
        events.append(SSEEvent(chunk(None)))
    events.append(SSEEvent(DONE_FRAME))
    return events


def _tool_call_deltas(call: ToolCallPlan) -> list[dict[str, Any]]:
    head = {
        "index": call.index,
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    deltas = [{"tool_calls": [head]}]
    deltas += [{"tool_calls": [{"index": call.index, "function": {"arguments": p}}]} for p in call.pieces]
    return deltas
