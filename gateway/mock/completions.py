"""Legacy `POST /v1/completions` (`text_completion` objects), streamed or not.

Still used by some clients and benchmarks; one choice per prompt, like OpenAI.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .chat import SYSTEM_FINGERPRINT
from .context import RequestContext
from .errors import MockHTTPError
from .generate import completion_length, derive_seed, text_pieces
from .stream import DONE_FRAME, SSEEvent, send_json, sse_frame, stream_events


@dataclass(frozen=True, slots=True, kw_only=True)
class _Choice:
    pieces: tuple[str, ...]
    finish_reason: str


def prompts_of(body: Any) -> list[str | list[int]]:
    """Normalise `prompt`: string, list of strings, token array, or list of token arrays."""
    prompt = body.get("prompt") if isinstance(body, dict) else None
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) for t in prompt):
            return [prompt]
        if all(
            isinstance(p, str) or (isinstance(p, list) and all(isinstance(t, int) for t in p)) for p in prompt
        ):
            return list(prompt)
    raise MockHTTPError(
        400, "'prompt' must be a string, an array of strings, or token arrays.", param="prompt"
    )


def _prompt_tokens(prompts: list[str | list[int]]) -> int:
    total = 0
    for p in prompts:
        total += len(p) if isinstance(p, list) else len(p) // 4
    return max(1, total)


def completions_request_tokens(body: Any, default_tokens: int) -> int:
    try:
        prompts = prompts_of(body)
    except MockHTTPError:
        return 1
    limit = body.get("max_tokens")
    per_prompt = limit if isinstance(limit, int) else default_tokens
    return _prompt_tokens(prompts) + per_prompt * len(prompts)


async def handle_completions(ctx: RequestContext) -> web.StreamResponse:
    body = ctx.json_body()
    model = ctx.require_model()
    prompts = prompts_of(body)
    max_tokens = ctx.optional_int("max_tokens")
    n, hit_limit = completion_length(
        max_tokens=max_tokens, default_tokens=ctx.cfg.default_tokens, header_tokens=ctx.header_tokens
    )
    finish = "length" if hit_limit else "stop"
    choices = [
        _Choice(
            pieces=tuple(text_pieces(derive_seed(ctx.cfg.seed, "completion", p), n)), finish_reason=finish
        )
        for p in prompts
    ]
    prompt_tokens = _prompt_tokens(prompts)
    completion_tokens = n * len(choices)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    head = {
        "id": "cmpl-" + secrets.token_hex(12),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if ctx.wants_stream():
        return await stream_events(
            ctx, _stream_events(head, choices, usage, include_usage=ctx.include_usage())
        )
    body_out: dict[str, Any] = {
        **head,
        "choices": [
            {"text": "".join(c.pieces), "index": i, "logprobs": None, "finish_reason": c.finish_reason}
            for i, c in enumerate(choices)
        ],
    }
    if not ctx.no_usage:
        body_out["usage"] = usage
    return await send_json(ctx, body_out, n_tokens=n)


def _stream_events(
    head: dict[str, Any], choices: list[_Choice], usage: dict[str, Any], *, include_usage: bool
) -> list[SSEEvent]:
    def chunk(index: int | None, text: str = "", finish: str | None = None) -> bytes:
        obj: dict[str, Any] = {
            **head,
            "choices": []
            if index is None
            else [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            obj["usage"] = usage if index is None else None
        return sse_frame(obj)

    events: list[SSEEvent] = []
    for i, choice in enumerate(choices):
        events += [SSEEvent(chunk(i, piece), content=True) for piece in choice.pieces]
        events.append(SSEEvent(chunk(i, "", choice.finish_reason)))
    if include_usage:
        events.append(SSEEvent(chunk(None)))
    events.append(SSEEvent(DONE_FRAME))
    return events
