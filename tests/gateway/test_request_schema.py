"""gateway/request_schema.py: shallow, type-level validation of each operation's body."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import LocalReply
from gateway.request_schema import TYPES_SLICE, element_types, validate

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
VALID: list[tuple[str, dict[str, Any]]] = [
    ("chat", CHAT),
    # Value ranges are forwarded: the provider judges them and its own error passes through.
    (
        "chat",
        {
            **CHAT,
            "temperature": 3,
            "top_p": 1.5,
            "presence_penalty": -2.5,
            "frequency_penalty": 9,
            "n": 0,
            "top_logprobs": 21,
            "max_tokens": 0,
            "max_completion_tokens": 2**40,
        },
    ),
    (
        "chat",
        {
            **CHAT,
            "messages": [{"role": "assistant", "content": None, "tool_calls": []}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 2**31 - 1,
            "n": 128,
            "top_logprobs": 0,
            "temperature": 0,
            "top_p": 1,
            "presence_penalty": -2,
            "frequency_penalty": 2.0,
            "stop": ["a", "b"],
            "user": "u",
            "seed": 7,
        },
    ),
    (
        "chat",
        {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "stop": "x"},
    ),
    (
        "chat",
        {
            **CHAT,
            "tools": [
                {"type": "function", "function": {"name": "f"}},
                {"type": "web_search"},
                {"type": "function", "name": "g"},
            ],
        },
    ),
    ("completions", {"model": "m", "prompt": "p"}),
    ("completions", {"model": "m", "prompt": ["p", "q"]}),
    ("embeddings", {"model": "m", "input": "x"}),
    ("embeddings", {"model": "m", "input": ["x", "y"], "encoding_format": "base64", "dimensions": 8}),
    ("embeddings", {"model": "m", "input": [1, 2, 3]}),
    ("embeddings", {"model": "m", "input": [[1, 2], [3]]}),
    ("responses", {"model": "m", "input": "x", "instructions": "be brief"}),
    ("responses", {"model": "m", "previous_response_id": "resp_1"}),
    ("responses", {"model": "m", "input": [{"role": "user", "content": "x"}]}),
]


@pytest.mark.parametrize(("operation", "body"), VALID)
def test_accepts_valid_bodies(operation: str, body: dict[str, Any]) -> None:
    validate(operation, body)


INVALID: list[tuple[str, dict[str, Any], str | None, str]] = [
    # operation, body, param, code
    ("chat", {**CHAT, "base_url": "http://evil"}, "base_url", "forbidden_field"),
    ("chat", {**CHAT, "api_key": "k", "organization_id": "o"}, "api_key", "forbidden_field"),
    ("chat", {"messages": CHAT["messages"]}, "model", "missing_model"),
    ("chat", {**CHAT, "model": 5}, "model", "invalid_type"),
    ("chat", {**CHAT, "model": ""}, "model", "invalid_type"),
    ("chat", {**CHAT, "model": "m" * 257}, "model", "invalid_type"),
    ("chat", {**CHAT, "model": "gpt\n4o"}, "model", "invalid_value"),
    ("chat", {**CHAT, "stream": "yes"}, "stream", "invalid_type"),
    ("chat", {**CHAT, "stream_options": []}, "stream_options", "invalid_type"),
    ("chat", {**CHAT, "user": 1}, "user", "invalid_type"),
    ("chat", {**CHAT, "max_tokens": True}, "max_tokens", "invalid_type"),
    ("chat", {**CHAT, "max_tokens": 1.5}, "max_tokens", "invalid_type"),
    ("chat", {**CHAT, "temperature": "1"}, "temperature", "invalid_type"),
    ("chat", {**CHAT, "top_p": True}, "top_p", "invalid_type"),
    ("chat", {**CHAT, "stop": ["a", 1]}, "stop", "invalid_type"),
    ("chat", {**CHAT, "stop": 3}, "stop", "invalid_type"),
    ("chat", {**CHAT, "tools": {"type": "function"}}, "tools", "invalid_type"),
    ("chat", {**CHAT, "tools": [{"function": {"name": "f"}}]}, "tools[0]", "invalid_type"),
    (
        "chat",
        {**CHAT, "tools": [{"type": "function", "function": {"name": ""}}]},
        "tools[0].function.name",
        "invalid_value",
    ),
    ("chat", {"model": "m"}, "messages", "missing_required"),
    ("chat", {"model": "m", "messages": "hi"}, "messages", "invalid_type"),
    ("chat", {"model": "m", "messages": []}, "messages", "empty_array"),
    ("chat", {"model": "m", "messages": ["hi"]}, "messages[0]", "invalid_type"),
    (
        "chat",
        {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
        "messages[0].role",
        "invalid_value",
    ),
    ("chat", {"model": "m", "messages": [{"content": "x"}]}, "messages[0].role", "invalid_value"),
    (
        "chat",
        {"model": "m", "messages": [{"role": "user", "content": 3}]},
        "messages[0].content",
        "invalid_type",
    ),
    (
        "chat",
        {"model": "m", "messages": [{"role": "assistant", "content": "ok"}, {"role": "system"}]},
        "messages[1].content",
        "missing_required",
    ),
    ("completions", {"model": "m"}, "prompt", "missing_required"),
    ("completions", {"model": "m", "prompt": 3}, "prompt", "invalid_type"),
    ("embeddings", {"model": "m"}, "input", "missing_required"),
    ("embeddings", {"model": "m", "input": "x", "dimensions": "8"}, "dimensions", "invalid_type"),
    (
        "embeddings",
        {"model": "m", "input": "x", "encoding_format": "int8"},
        "encoding_format",
        "invalid_value",
    ),
    ("embeddings", {"model": "m", "input": []}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": 3}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": ["x", 1]}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": [1, True]}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": [[1], ["x"]]}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": [[1, True]]}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": [[1], 2]}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": [True]}, "input", "invalid_type"),
    ("embeddings", {"model": "m", "input": [1.5]}, "input", "invalid_type"),
    ("responses", {"model": "m"}, "input", "missing_required"),
    ("responses", {"model": "m", "input": 3}, "input", "invalid_type"),
    ("responses", {"model": "m", "input": "x", "instructions": ["be brief"]}, "instructions", "invalid_type"),
]


@pytest.mark.parametrize(
    ("operation", "body", "param", "code"),
    INVALID,
    ids=[f"{op}-{code}-{param}-{i}" for i, (op, _, param, code) in enumerate(INVALID)],
)
def test_refuses_invalid_bodies(operation: str, body: dict[str, Any], param: str | None, code: str) -> None:
    with pytest.raises(LocalReply) as exc:
        validate(operation, body)
    assert (exc.value.status, exc.value.type, exc.value.param, exc.value.code) == (
        400,
        "invalid_request_error",
        param,
        code,
    )


def test_forbidden_fields_are_checked_before_anything_else() -> None:
    """Even a body with no model is refused for the steering field first (the name is reported, sorted)."""
    with pytest.raises(LocalReply) as exc:
        validate("chat", {"azure_endpoint": "x", "api_base": "y"})
    assert (exc.value.code, exc.value.param) == ("forbidden_field", "api_base")


def test_common_fields_are_checked_in_a_fixed_order_whatever_the_body_order() -> None:
    """Only the common fields a body names are looked at, but the first wrong one in the fixed order
    (stream, ..., the numbers last) is the one reported; ``null`` values pass as before."""
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(LocalReply) as exc:
        validate("chat", {"temperature": "hot", "n": "2", "stream": "yes", "model": "m",
                          "messages": messages})
    assert exc.value.param == "stream"
    with pytest.raises(LocalReply) as exc:
        validate("chat", {"temperature": "hot", "n": True, "model": "m", "messages": messages})
    assert exc.value.param == "n"
    validate("chat", {"model": "m", "messages": messages, "stream": None, "top_p": None, "seed": None})


def test_element_types_are_read_a_slice_at_a_time_with_every_type_seen() -> None:
    values: list[Any] = ["s"] * (3 * TYPES_SLICE) + [1]  # the odd one in the last slice
    assert element_types(values) == {str, int}
    assert element_types(["s"] * (2 * TYPES_SLICE)) == {str}
    assert element_types([]) == set()
    with pytest.raises(LocalReply):  # control: a mixed embeddings input is still refused
        validate("embeddings", {"model": "m", "input": values})
