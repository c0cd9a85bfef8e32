"""`POST /v1/responses` (Responses API), non-stream and with the typed event stream.

The SDK dispatches stream events on `type` and rebuilds `output_text` from the
final response, so the event order and the item/part shapes mirror OpenAI's:
created, in_progress, output_item.added, content_part.added, output_text.delta*,
output_text.done, content_part.done, output_item.done, completed.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .chat import continued_pieces
from .context import RequestContext
from .errors import MockHTTPError
from .generate import (
    ToolCallPlan,
    completion_length,
    content_text,
    derive_seed,
    estimate_prompt_tokens,
    plan_tool_calls,
    text_pieces,
)
from .stream import SSEEvent, send_json, sse_frame, stream_events


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponsePlan:
    id: str
    message_id: str
    created_at: int
    pieces: tuple[str, ...]
    tool_calls: tuple[ToolCallPlan, ...]
    incomplete: bool
    input_tokens: int
    output_tokens: int


def input_items(body: Any) -> list[dict[str, Any]]:
    """`input` as a list of items (a bare string is one user message)."""
    value = body.get("input") if isinstance(body, dict) else None
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value
    raise MockHTTPError(400, "'input' must be a string or an array of input items.", param="input")


def _item_text(item: dict[str, Any]) -> str:
    if "content" in item:
        return content_text(item.get("content"))
    for key in ("output", "arguments", "text"):
        value = item.get(key)
        if isinstance(value, str):
            return value
    return ""


def responses_input_tokens(body: Any) -> int:
    try:
        items = input_items(body)
    except MockHTTPError:
        return 1
    texts = [_item_text(i) for i in items]
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        texts.append(instructions)
    return estimate_prompt_tokens(texts)


def responses_request_tokens(body: Any, default_tokens: int) -> int:
    limit = body.get("max_output_tokens") if isinstance(body, dict) else None
    return responses_input_tokens(body) + (limit if isinstance(limit, int) else default_tokens)


def _last_user_text(items: list[dict[str, Any]]) -> str | None:
    if not items:
        return None
    last = items[-1]
    if last.get("type", "message") != "message" or last.get("role", "user") != "user":
        return None
    return content_text(last.get("content"))


def _prefill(items: list[dict[str, Any]]) -> str | None:
    """The text of a final assistant message to continue (the gateway's continuation of a broken stream)."""
    last = items[-1] if len(items) > 1 else {}
    if last.get("type", "message") != "message" or last.get("role") != "assistant":
        return None
    return content_text(last.get("content")) or None


def _continuation_plan(ctx: RequestContext, body: dict[str, Any], items: list[dict[str, Any]], prefill: str,
                       max_tokens: int | None) -> ResponsePlan:
    seed = derive_seed(ctx.cfg.seed, "responses", body.get("instructions"), items[:-1])
    pieces, hit_limit = continued_pieces(seed, prefill, max_tokens, ctx.cfg.default_tokens)
    return ResponsePlan(id="resp_" + secrets.token_hex(16), message_id="msg_" + secrets.token_hex(16),
                        created_at=int(time.time()), pieces=pieces, tool_calls=(), incomplete=hit_limit,
                        input_tokens=responses_input_tokens(body), output_tokens=len(pieces))


def plan_response(ctx: RequestContext) -> ResponsePlan:
    body = ctx.json_body()
    ctx.require_model()
    items = input_items(body)
    max_tokens = ctx.optional_int("max_output_tokens")
    prefill = _prefill(items)
    if prefill is not None:
        if ctx.fault.reject_prefill:
            raise MockHTTPError(400, "The input must end with a user message.", param="input")
        return _continuation_plan(ctx, body, items, prefill, max_tokens)
    seed = derive_seed(ctx.cfg.seed, "responses", body.get("instructions"), items)
    calls = plan_tool_calls(
        seed=seed,
        tools=body.get("tools"),
        tool_choice=body.get("tool_choice"),
        last_user=_last_user_text(items),
        header_count=ctx.tool_calls_header,
    )
    n, hit_limit = completion_length(
        max_tokens=max_tokens, default_tokens=ctx.cfg.default_tokens, header_tokens=ctx.header_tokens
    )
    pieces = () if calls else tuple(text_pieces(seed, n))
    return ResponsePlan(
        id="resp_" + secrets.token_hex(16),
        message_id="msg_" + secrets.token_hex(16),
        created_at=int(time.time()),
        pieces=pieces,
        tool_calls=tuple(calls),
        incomplete=hit_limit and not calls,
        input_tokens=responses_input_tokens(body),
        output_tokens=sum(len(c.pieces) for c in calls) if calls else n,
    )


async def handle_responses(ctx: RequestContext) -> web.StreamResponse:
    plan = plan_response(ctx)
    if ctx.wants_stream():
        return await stream_events(ctx, response_stream_events(ctx, plan))
    return await send_json(ctx, response_object(ctx, plan, final=True), n_tokens=plan.output_tokens)


def _message_item(plan: ResponsePlan, *, done: bool) -> dict[str, Any]:
    content = [_text_part("".join(plan.pieces))] if done else []
    status = ("incomplete" if plan.incomplete else "completed") if done else "in_progress"
    return {
        "id": plan.message_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(call: ToolCallPlan, *, done: bool) -> dict[str, Any]:
    return {
        "id": "fc_" + call.call_id.removeprefix("call_"),
        "type": "function_call",
        "status": "completed" if done else "in_progress",
        "call_id": call.call_id,
        "name": call.name,
        "arguments": call.arguments if done else "",
    }


def response_object(ctx: RequestContext, plan: ResponsePlan, *, final: bool) -> dict[str, Any]:
    body = ctx.json_body()
    if not final:
        status, output = "in_progress", []
    else:
        status = "incomplete" if plan.incomplete else "completed"
        output = [_call_item(c, done=True) for c in plan.tool_calls] or [_message_item(plan, done=True)]
    usage = None
    if final and not ctx.no_usage:
        usage = {
            "input_tokens": plan.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": plan.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": plan.input_tokens + plan.output_tokens,
        }
    return {
        "id": plan.id,
        "object": "response",
        "created_at": plan.created_at,
        "completed_at": int(time.time()) if final and not plan.incomplete else None,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if final and plan.incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": body.get("model"),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
    }


def response_stream_events(ctx: RequestContext, plan: ResponsePlan) -> list[SSEEvent]:
    """Typed events with `event:` lines and consecutive `sequence_number`s."""
    events: list[tuple[dict[str, Any], bool]] = [
        ({"type": "response.created", "response": response_object(ctx, plan, final=False)}, False),
        ({"type": "response.in_progress", "response": response_object(ctx, plan, final=False)}, False),
    ]
    if plan.tool_calls:
        for output_index, call in enumerate(plan.tool_calls):
            events += _call_events(call, output_index)
    else:
        events += _message_events(plan)
    final_type = "response.incomplete" if plan.incomplete else "response.completed"
    events.append(({"type": final_type, "response": response_object(ctx, plan, final=True)}, False))
    out: list[SSEEvent] = []
    for seq, (payload, is_content) in enumerate(events):
        payload["sequence_number"] = seq
        out.append(SSEEvent(sse_frame(payload, payload["type"]), content=is_content))
    return out


def _message_events(plan: ResponsePlan) -> list[tuple[dict[str, Any], bool]]:
    loc = {"item_id": plan.message_id, "output_index": 0, "content_index": 0}
    text = "".join(plan.pieces)
    events: list[tuple[dict[str, Any], bool]] = [
        (
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": _message_item(plan, done=False),
            },
            False,
        ),
        ({"type": "response.content_part.added", **loc, "part": _text_part("")}, False),
    ]
    events += [
        ({"type": "response.output_text.delta", **loc, "delta": p, "logprobs": []}, True) for p in plan.pieces
    ]
    events += [
        ({"type": "response.output_text.done", **loc, "text": text, "logprobs": []}, False),
        ({"type": "response.content_part.done", **loc, "part": _text_part(text)}, False),
        (
            {"type": "response.output_item.done", "output_index": 0, "item": _message_item(plan, done=True)},
            False,
        ),
    ]
    return events


def _call_events(call: ToolCallPlan, output_index: int) -> list[tuple[dict[str, Any], bool]]:
    item_id = _call_item(call, done=False)["id"]
    loc = {"item_id": item_id, "output_index": output_index}
    events: list[tuple[dict[str, Any], bool]] = [
        (
            {
                "type": "response.output_item.added",
                "output_index": output_index,
                "item": _call_item(call, done=False),
            },
            False,
        ),
    ]
    events += [
        ({"type": "response.function_call_arguments.delta", **loc, "delta": p}, True) for p in call.pieces
    ]
    events += [
        (
            {
                "type": "response.function_call_arguments.done",
                **loc,
                "arguments": call.arguments,
                "name": call.name,
            },
            False,
        ),
        (
            {
                "type": "response.output_item.done",
                "output_index": output_index,
                "item": _call_item(call, done=True),
            },
            False,
        ),
    ]
    return events
