"""SSE replay of canonical answers: assembling the replay gives back exactly the stored answer."""
from __future__ import annotations

from typing import Any

import orjson
import pytest

from policies.cache.canonical import answer_from_sse
from policies.cache.replay import render_sse

CHAT: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 5,
    "model": "m",
    "system_fingerprint": "fp",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello there, this is a longer answer.",
                "reasoning_content": "First think, then speak.",
            },
            "logprobs": None,
            "finish_reason": "stop",
        },
        {
            "index": 1,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1, "b": "xyz"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        },
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
}
COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 5,
    "model": "m",
    "choices": [
        {"text": "once upon a time in a land", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 2, "completion_tokens": 7, "total_tokens": 9},
}
RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 5,
    "status": "completed",
    "model": "m",
    "output": [
        {
            "id": "msg_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "a reply of some length", "annotations": []}],
        },
        {
            "id": "fc_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "c",
            "name": "f",
            "arguments": '{"q": "r"}',
        },
    ],
    "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
}


@pytest.mark.parametrize(
    "operation,obj", [("chat", CHAT), ("completions", COMPLETION), ("responses", RESPONSE)]
)
def test_round_trip(operation: str, obj: dict[str, Any]) -> None:
    """render_sse then answer_from_sse is the identity on canonical answers."""
    assert answer_from_sse(operation, render_sse(operation, obj, include_usage=True)) == obj


def test_chat_stream_shape() -> None:
    """Role delta first, content in several deltas, usage chunk only when asked, [DONE] last."""
    with_usage = render_sse("chat", CHAT, include_usage=True).split(b"\n\n")
    without = render_sse("chat", CHAT, include_usage=False)
    assert b'"role":"assistant"' in with_usage[0]
    assert sum(b'"content":"' in e for e in with_usage) >= 3
    assert with_usage[-2] == b"data: [DONE]" and b'"choices":[]' in with_usage[-3]
    assert b'"usage"' not in without
    assert answer_from_sse("chat", without) == {k: v for k, v in CHAT.items() if k != "usage"}


def test_incomplete_streams_are_rejected() -> None:
    """No [DONE], an error event or a missing finish_reason: not a complete answer."""
    full = render_sse("chat", CHAT, include_usage=False)
    assert answer_from_sse("chat", full.replace(b"data: [DONE]\n\n", b"")) is None
    assert answer_from_sse("chat", b'data: {"error": {"message": "x"}}\n\n' + full) is None
    first = full.split(b"\n\n")[0] + b"\n\ndata: [DONE]\n\n"
    assert answer_from_sse("chat", first) is None
    assert (
        answer_from_sse("responses", render_sse("responses", RESPONSE, True).rsplit(b"event:", 1)[0]) is None
    )


def test_provider_extras_and_empty_fields_ride_on_the_first_chunk() -> None:
    message = {"role": "assistant", "content": "hello", "refusal": None, "annotations": []}
    choice = {"index": 0, "finish_reason": "stop", "logprobs": None, "content_filter_results": {"a": 1},
              "message": message}
    obj = {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "x_groq": {"id": "r"},
           "choices": [choice]}
    sse = render_sse("chat", obj, include_usage=False)
    frames = [f for f in sse.split(b"\n\n") if f.startswith(b"data: {")]
    first = orjson.loads(frames[0][6:])
    assert first["x_groq"] == {"id": "r"} and first["choices"][0]["content_filter_results"] == {"a": 1}
    assert first["choices"][0]["delta"] == {**message, "content": ""}
    assert all(b"x_groq" not in f and b"content_filter_results" not in f for f in frames[1:])
    assert answer_from_sse("chat", sse) == obj
