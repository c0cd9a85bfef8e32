"""A request body's shape, validated once: shallow, type-level checks.

Deliberately shallow (the provider remains the judge of semantics) but strict enough that no malformed
body can raise deeper in the gateway; fields that the gateway or provider would choke on (or that would
steer it, ``FORBIDDEN_FIELDS``) are refused with a 400 in the OpenAI error shape.
"""
from __future__ import annotations

from itertools import islice
from typing import Any

from gateway.errors import bad_request

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Fields that would let a client steer where or how the gateway connects: never accepted.
FORBIDDEN_FIELDS = frozenset({"api_base", "base_url", "api_key", "api_version", "azure_endpoint",
                              "organization_id"})


def validate(operation: str, body: dict[str, Any]) -> None:
    """Shallow, type-level checks; raises ``LocalReply`` 400 on the first problem."""
    forbidden = FORBIDDEN_FIELDS.intersection(body)
    if forbidden:
        name = sorted(forbidden)[0]
        raise bad_request(
            f"Unrecognized request argument supplied: {name}", param=name, code="forbidden_field"
        )
    model = body.get("model")
    if model is None:
        raise bad_request("You must provide a model parameter.", param="model", code="missing_model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise bad_request(
            "'model' must be a non-empty string of at most 256 characters.",
            param="model",
            code="invalid_type",
        )
    if not model.isprintable():
        raise bad_request("'model' must not contain control characters.", param="model", code="invalid_value")
    _check_common(body)
    VALIDATORS[operation](body)


# The typed common fields, in the order they are checked (the first wrong one is reported); ``float``
# stands for "a number". Value ranges are the provider's to judge (they differ between providers): only
# types are checked here.
_COMMON_TYPES: dict[str, type] = {
    "stream": bool, "stream_options": dict, "user": str,
    **dict.fromkeys(("max_tokens", "max_completion_tokens", "max_output_tokens", "n", "seed", "top_logprobs"),
                    int),
    **dict.fromkeys(("temperature", "top_p", "presence_penalty", "frequency_penalty"), float),
}
_COMMON_NAMES = frozenset(_COMMON_TYPES)


def _check_common(body: dict[str, Any]) -> None:
    if not _COMMON_NAMES.isdisjoint(body):  # most bodies name one or two of them: only those are looked at
        for name, tp in _COMMON_TYPES.items():
            if name in body:
                if tp is float:
                    _number(body, name)
                else:
                    _typed(body, name, tp)
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise bad_request("'stop' must be a string or a list of strings.", param="stop", code="invalid_type")
    if "tools" in body:
        _check_tools(body["tools"])


def _typed(body: dict[str, Any], name: str, tp: type) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise bad_request(
            f"Invalid type for '{name}': expected {_TYPE_NAMES[tp]}.", param=name, code="invalid_type"
        )


_TYPE_NAMES = {bool: "a boolean", dict: "an object", str: "a string", int: "an integer", list: "an array"}


def _number(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise bad_request(f"Invalid type for '{name}': expected a number.", param=name, code="invalid_type")


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise bad_request("Invalid type for 'tools': expected an array.", param="tools", code="invalid_type")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise bad_request(
                f"Invalid 'tools[{i}]': expected an object with a 'type'.",
                param=f"tools[{i}]",
                code="invalid_type",
            )
        fn = tool.get("function")
        if (
            tool["type"] == "function"
            and "name" not in tool
            and (not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"])
        ):
            raise bad_request(
                f"Missing 'tools[{i}].function.name'.",
                param=f"tools[{i}].function.name",
                code="invalid_value",
            )


def _check_chat(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise bad_request(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required"
        )
    if not isinstance(messages, list):
        raise bad_request(
            "Invalid type for 'messages': expected an array.", param="messages", code="invalid_type"
        )
    if not messages:
        raise bad_request(
            "'messages' must contain at least one message.", param="messages", code="empty_array"
        )
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise bad_request(
                f"Invalid type for 'messages[{i}]': expected an object.",
                param=f"messages[{i}]",
                code="invalid_type",
            )
        role = msg.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise bad_request(
                f"Invalid value for 'messages[{i}].role': {str(role)[:40]!r}.",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(
                f"Invalid type for 'messages[{i}].content': expected a string or an array.",
                param=f"messages[{i}].content",
                code="invalid_type",
            )
        if content is None and role in ("user", "system", "developer"):
            raise bad_request(
                f"Missing 'messages[{i}].content'.", param=f"messages[{i}].content", code="missing_required"
            )


def _check_completions(body: dict[str, Any]) -> None:
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("Missing required parameter: 'prompt'.", param="prompt", code="missing_required")
    if not isinstance(prompt, (str, list)):
        raise bad_request("Invalid type for 'prompt'.", param="prompt", code="invalid_type")


_STR, _INT, _LIST = frozenset({str}), frozenset({int}), frozenset({list})


TYPES_SLICE = 8192  # elements whose types are read in one C call (the GIL can go to the loop between)


def element_types(values: list[Any]) -> set[type]:
    """The types of ``values``' elements, read at C speed (``map(type, ...)``: 100k token ids cost ~1 ms,
    not ~13 ms) ``TYPES_SLICE`` at a time: one call over 100k strings kept the GIL for 4-5 ms (issue 15)."""
    kinds: set[type] = set()
    types = map(type, values)
    for _ in range(0, len(values), TYPES_SLICE):
        kinds.update(islice(types, TYPES_SLICE))
    return kinds


def _check_embeddings(body: dict[str, Any]) -> None:
    value = body.get("input")
    if value is None:
        raise bad_request("Missing required parameter: 'input'.", param="input", code="missing_required")
    _typed(body, "dimensions", int)
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise bad_request(
            "'encoding_format' must be 'float' or 'base64'.", param="encoding_format", code="invalid_value"
        )
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise bad_request(
            "'input' must be a string or a non-empty array.", param="input", code="invalid_type"
        )
    kinds = element_types(value)
    if kinds == _LIST:
        ok = all(set(map(type, v)) <= _INT for v in value)
    else:
        ok = kinds == _STR or kinds == _INT  # bool is its own type: never a token id
    if not ok:
        raise bad_request(
            "'input' items must all be strings or token arrays.", param="input", code="invalid_type"
        )


def _check_responses(body: dict[str, Any]) -> None:
    value = body.get("input")
    if value is None and "previous_response_id" not in body and "prompt" not in body:
        raise bad_request("Missing required parameter: 'input'.", param="input", code="missing_required")
    if value is not None and not isinstance(value, (str, list)):
        raise bad_request(
            "Invalid type for 'input': expected a string or an array.", param="input", code="invalid_type"
        )
    _typed(body, "instructions", str)


VALIDATORS = {
    "chat": _check_chat,
    "completions": _check_completions,
    "embeddings": _check_embeddings,
    "responses": _check_responses,
}
