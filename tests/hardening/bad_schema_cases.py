"""Bad-input catalogue, part two: well-formed JSON with the wrong shape
(schema, ranges, tools, forbidden fields)."""

from __future__ import annotations

from typing import Any

import orjson

from tests.e2e.test_bad_input import Case
from tests.hardening.bad_cases import CMP, EMB, RSP, USER, bad, chat, chat_msgs


def role_and_message_cases() -> list[Case]:
    roles: list[Any] = ["", "USER", "root", "wizard", "system ", 5, None, ["user"], {"r": "user"}, True]
    out = [bad(f"role: {r!r}", chat_msgs([{"role": r, "content": "hi"}]), "invalid_value") for r in roles]
    out += [bad("role: missing", chat_msgs([{"content": "hi"}]), "invalid_value")]
    messages: list[tuple[str, Any, str]] = [
        ("messages: null", None, "missing_required"),
        ("messages: object", {"role": "user", "content": "hi"}, "invalid_type"),
        ("messages: number", 3, "invalid_type"),
        ("messages: list of null", [None], "invalid_type"),
        ("messages: list of lists", [[{"role": "user", "content": "hi"}]], "invalid_type"),
        ("messages: list of strings", ["hi", "there"], "invalid_type"),
        ("messages: bad item after a good one", [USER[0], 5], "invalid_type"),
        ("content: boolean", [{"role": "user", "content": True}], "invalid_type"),
        ("content: object", [{"role": "user", "content": {"text": "hi"}}], "invalid_type"),
        ("content: null for system", [{"role": "system", "content": None}], "missing_required"),
        ("content: null for developer", [{"role": "developer", "content": None}], "missing_required"),
        ("content: missing for system", [{"role": "system"}], "missing_required"),
        ("content: number for assistant", [USER[0], {"role": "assistant", "content": 1.5}], "invalid_type"),
    ]
    out += [bad(name, chat_msgs(value), code) for name, value, code in messages]
    return out


def range_cases() -> list[Case]:
    # Types only: value ranges are forwarded and judged by the provider (issue 17).
    values: list[tuple[str, Any, str]] = [
        ("temperature", "1", "invalid_type"),
        ("temperature", True, "invalid_type"),
        ("temperature", [1], "invalid_type"),
        ("top_p", {}, "invalid_type"),
        ("frequency_penalty", "0", "invalid_type"),
        ("n", 1.5, "invalid_type"),
        ("n", "2", "invalid_type"),
        ("n", False, "invalid_type"),
        ("max_tokens", 1.5, "invalid_type"),
        ("max_tokens", True, "invalid_type"),
        ("max_tokens", [10], "invalid_type"),
        ("max_completion_tokens", "many", "invalid_type"),
        ("seed", "x", "invalid_type"),
        ("seed", 1.5, "invalid_type"),
        ("top_logprobs", "x", "invalid_type"),
        ("stop", 5, "invalid_type"),
        ("stop", {"a": 1}, "invalid_type"),
        ("stop", ["a", None], "invalid_type"),
        ("stream", "true", "invalid_type"),
        ("stream", 1, "invalid_type"),
        ("stream", [True], "invalid_type"),
        ("stream_options", [], "invalid_type"),
        ("stream_options", "usage", "invalid_type"),
        ("user", 5, "invalid_type"),
        ("user", {"id": 1}, "invalid_type"),
    ]
    return [bad(f"param: {name}={value!r}", chat(**{name: value}), code) for name, value, code in values]


def tool_cases() -> list[Case]:
    tools: list[tuple[str, Any, str]] = [
        ("tools: string", "search", "invalid_type"),
        ("tools: number", 1, "invalid_type"),
        ("tools: list of strings", ["search"], "invalid_type"),
        ("tools: item without type", [{"function": {"name": "f"}}], "invalid_type"),
        ("tools: type is a number", [{"type": 1, "function": {"name": "f"}}], "invalid_type"),
        (
            "tools: function without name",
            [{"type": "function", "function": {"description": "x"}}],
            "invalid_value",
        ),
        ("tools: function name empty", [{"type": "function", "function": {"name": ""}}], "invalid_value"),
        ("tools: function name a number", [{"type": "function", "function": {"name": 5}}], "invalid_value"),
        ("tools: function is a string", [{"type": "function", "function": "f"}], "invalid_value"),
        (
            "tools: second tool broken",
            [{"type": "function", "function": {"name": "f"}}, None],
            "invalid_type",
        ),
    ]
    return [bad(name, chat(tools=value), code) for name, value, code in tools]


def forbidden_cases() -> list[Case]:
    fields = ("api_base", "base_url", "api_key", "api_version", "azure_endpoint", "organization_id")
    out = [
        bad(f"forbidden: {f} in chat", chat(**{f: "http://127.0.0.1:9/steal"}), "forbidden_field")
        for f in fields
    ]
    evil = "http://169.254.169.254/latest"
    out += [
        bad(
            "forbidden: base_url in embeddings",
            orjson.dumps({"model": "text-embedding-3-small", "input": "a", "base_url": evil}),
            "forbidden_field",
            path=EMB,
        ),
        bad(
            "forbidden: api_base in completions",
            orjson.dumps({"model": "gpt-3.5-turbo-instruct", "prompt": "a", "api_base": evil}),
            "forbidden_field",
            path=CMP,
        ),
        bad(
            "forbidden: api_key in responses",
            orjson.dumps({"model": "gpt-4o", "input": "a", "api_key": "sk-x"}),
            "forbidden_field",
            path=RSP,
        ),
        bad("forbidden: base_url set to null", chat(base_url=None), "forbidden_field"),
    ]
    return out


def operation_cases() -> list[Case]:
    def emb(**f: Any) -> bytes:
        return orjson.dumps({"model": "text-embedding-3-small", **f})

    def cmp(**f: Any) -> bytes:
        return orjson.dumps({"model": "gpt-3.5-turbo-instruct", **f})

    def rsp(**f: Any) -> bytes:
        return orjson.dumps({"model": "gpt-4o", **f})

    return [
        bad("embeddings: input a number", emb(input=5), "invalid_type", path=EMB),
        bad("embeddings: input empty list", emb(input=[]), "invalid_type", path=EMB),
        bad("embeddings: input an object", emb(input={"text": "a"}), "invalid_type", path=EMB),
        bad("embeddings: list of lists of strings", emb(input=[["a"]]), "invalid_type", path=EMB),
        bad("embeddings: tokens with a boolean", emb(input=[1, True]), "invalid_type", path=EMB),
        bad("embeddings: null item", emb(input=["a", None]), "invalid_type", path=EMB),
        bad("embeddings: dimensions a string", emb(input="a", dimensions="256"), "invalid_type", path=EMB),
        bad(
            "embeddings: encoding_format int8",
            emb(input="a", encoding_format="int8"),
            "invalid_value",
            path=EMB,
        ),
        bad("completions: prompt a number", cmp(prompt=5), "invalid_type", path=CMP),
        bad("completions: prompt an object", cmp(prompt={"text": "a"}), "invalid_type", path=CMP),
        bad("completions: prompt null", cmp(prompt=None), "missing_required", path=CMP),
        bad("responses: input an object", rsp(input={"text": "a"}), "invalid_type", path=RSP),
        bad("responses: input missing", rsp(), "missing_required", path=RSP),
        bad("responses: instructions a number", rsp(input="a", instructions=5), "invalid_type", path=RSP),
        bad("responses: stream a string", rsp(input="a", stream="yes"), "invalid_type", path=RSP),
    ]


def schema_cases() -> list[Case]:
    return [*role_and_message_cases(), *range_cases(), *tool_cases(), *forbidden_cases(), *operation_cases()]
