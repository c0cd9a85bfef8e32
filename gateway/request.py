"""Read, decode and validate a client's request body, once.

Everything here answers bad input with a ``LocalReply`` in the OpenAI error
shape and the right 4xx: the size limit is applied to the decompressed body
(gzip bombs stop at the limit, not at memory exhaustion), JSON nesting beyond
``MAX_DEPTH`` is refused before anything walks it recursively, and fields that
the gateway or provider would choke on are checked by type. Validation is
deliberately shallow (the provider remains the judge of semantics) but strict
enough that no malformed body can raise deeper in the gateway.
"""
from __future__ import annotations

import asyncio
import json
import re
from itertools import compress
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError

from gateway.appstate import APP_STATE
from gateway.errors import LocalReply, bad_request

MAX_DEPTH = 64
SERVER_DECODED = frozenset({"identity", "gzip", "deflate", "br", "zstd"})
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Fields that would let a client steer where or how the gateway connects: never accepted.
FORBIDDEN_FIELDS = frozenset({"api_base", "base_url", "api_key", "api_version", "azure_endpoint",
                              "organization_id"})


def too_large(limit: int) -> LocalReply:
    return LocalReply(413, f"Request body too large: the limit is {limit} bytes.",
                      type="invalid_request_error", code="request_too_large")


async def read_body(request: web.Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, decompressed, refused past ``limit`` bytes after decompression.

    aiohttp's parser already inflates gzip/deflate/br/zstd bodies as they stream
    in, so counting what we read here counts decompressed bytes: a gzip bomb is
    stopped at the limit, not after it filled memory. The whole body must arrive
    within ``timeout_s`` (None: ``server.body_timeout_s``): a client that trickles
    its body gets 408 instead of holding a task and a buffer forever.
    """
    if request.content.is_eof():  # the whole body is already here (most requests): no timer needed
        return await _read_body(request, limit)
    if timeout_s is None:
        timeout_s = request.app[APP_STATE].config.server.body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(request, limit)
    except TimeoutError as exc:
        raise LocalReply(408, f"The request body did not arrive within {timeout_s:g} s.",
                         type="invalid_request_error", code="request_timeout") from exc


async def _read_body(request: web.Request, limit: int) -> bytes:
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding and encoding not in SERVER_DECODED:
        raise LocalReply(415, f"Unsupported Content-Encoding {encoding[:32]!r}: use gzip, deflate or none.",
                         type="invalid_request_error", code="unsupported_content_encoding")
    if not encoding and request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
    except web.HTTPException:
        raise
    except (RequestPayloadError, ContentEncodingError) as exc:
        raise bad_request(f"Request body could not be decoded ({encoding or 'identity'}).",
                          code="invalid_encoding") from exc
    return b"".join(chunks)


def parse_json(raw: bytes) -> dict[str, Any]:
    """One JSON object, refused (400) when it is not one, nests too deep or repeats a steering key.

    Besides orjson's parse, the checks stay cheap on large honest bodies (issue 15: they ran at ~3x the
    parse's cost on a 500 KB prompt): depth walks the parsed containers within a budget before it falls
    back to counting brackets, and the steering scan counts only the keys the parsed body has.
    """
    if not raw.strip():
        raise bad_request("Request body is empty: send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            raise too_deep() from exc
        raise bad_request(f"We could not parse the JSON body of your request: {_short(str(exc))}",
                          code="invalid_json") from exc
    if not isinstance(body, dict):
        raise bad_request("The JSON body must be an object.", code="invalid_json")
    if _nests_too_deep(raw, body):
        raise too_deep()
    # The original bytes are forwarded: a duplicated steering key could be read one way here (last wins)
    # and another way by the provider (first wins), so route, limits and cache would see another request.
    if _may_steer_twice(raw, body) and _has_duplicate_keys(raw):
        raise bad_request("The JSON body has a duplicate key.", code="duplicate_key")
    return body


# Elements the depth walk may look at before it lets a bracket count decide instead: an agent's
# conversation of hundreds of messages fits; a long token array or an adversarial body does not.
WALK_BUDGET = 16_384


def _nests_too_deep(raw: bytes, body: dict[str, Any]) -> bool:
    """Deeper than ``MAX_DEPTH``? The budgeted walk decides most bodies without a pass over the bytes;
    past its budget, brackets (an upper bound on depth) decide whether the full walk is needed."""
    verdict = walk_depth(body, MAX_DEPTH, WALK_BUDGET)
    if verdict is not None:
        return verdict
    return raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and walk_depth(body, MAX_DEPTH) is True


_IS_CONTAINER = frozenset({dict, list}).__contains__


def walk_depth(value: dict[str, Any], limit: int, budget: float = float("inf")) -> bool | None:
    """True/False when containers nest deeper than ``limit``; None once ``budget`` elements were seen.

    Level by level; a container's children are sifted at C speed (``compress`` over their types), so
    only containers cost Python work (~0.2 us each), never the strings and numbers inside them."""
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            budget -= len(children)
            if budget < 0:
                return None
            below.extend(compress(children, map(_IS_CONTAINER, map(type, children))))
        level = below
        depth += 1
    return False


_STEERING_KEYS = frozenset({"model", "stream"})
# An object key of 5 to 36 bytes (the longest spelling of "stream" is six \u escapes): bounded, so the
# scan stays linear on any body.
_SHORT_KEY = re.compile(rb'"([^"]{5,36})"\s*:')
# A \u escape of an ASCII letter (0x40-0x7f): any escaped spelling of "model" or "stream" has one.
# Text escapes (non-ASCII, control characters) do not match, so honest bodies skip the key scan.
_ESCAPED_LETTER = re.compile(rb"\\u00[4-7][0-9a-fA-F]")


def _may_steer_twice(raw: bytes, body: dict[str, Any]) -> bool:
    """Cheap test for a possibly duplicated steering key, literal or escaped (``"mod\u0065l"``).

    A key the parsed body lacks is in no top-level spelling of the bytes: only the keys it has are
    counted (a body without ``stream`` costs one count)."""
    if _more_than_one(raw, b'"model"') or ("stream" in body and _more_than_one(raw, b'"stream"')):
        return True
    if raw.find(b"\\") < 0 or not _has_escaped_letter(raw):
        return False
    for match in _SHORT_KEY.finditer(raw):
        key = match.group(1)
        if b"\\u" not in key:
            continue
        try:
            if orjson.loads(b'"' + key + b'"') in _STEERING_KEYS:
                return True
        except orjson.JSONDecodeError:
            continue
    return False


# Passes over a large body's bytes run in slices: the GIL can go to the event loop between two slices
# (at the switch interval), not only after a whole multi-megabyte C call (issue 15).
SLICE_BYTES = 1 << 20


def _more_than_one(raw: bytes, needle: bytes) -> bool:
    """``raw.count(needle) > 1``, counted slice by slice (``needle`` must not overlap itself)."""
    seen, n, reach = 0, len(raw), len(needle) - 1
    for at in range(0, n, SLICE_BYTES):
        seen += raw.count(needle, at, min(at + SLICE_BYTES + reach, n))
        if seen > 1:
            return True
    return False


def _has_escaped_letter(raw: bytes) -> bool:
    """``_ESCAPED_LETTER.search(raw)``, slice by slice (a match starting in a slice may end past it)."""
    n = len(raw)
    return any(_ESCAPED_LETTER.search(raw, at, min(at + SLICE_BYTES + 5, n)) is not None
               for at in range(0, n, SLICE_BYTES))


def _has_duplicate_keys(raw: bytes) -> bool:
    """Exact and slow (the stdlib parser with a hook): is a steering key repeated in the top-level object?

    Only run when a cheap count says it may be. Objects are built inside out, so the hook's last call is
    the top-level object; nested objects are not built at all (their repeats are not ours to judge)."""
    last: list[list[tuple[str, Any]]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> None:
        last[:] = [pairs]

    json.loads(raw, object_pairs_hook=pairs_hook)
    steering = [key for key, _ in last[0] if key in _STEERING_KEYS] if last else []
    return len(steering) != len(set(steering))


def too_deep() -> LocalReply:
    return bad_request(f"JSON nested deeper than {MAX_DEPTH} levels.", code="json_too_deep")


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."


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


def _check_common(body: dict[str, Any]) -> None:
    _typed(body, "stream", bool)
    _typed(body, "stream_options", dict)
    _typed(body, "user", str)
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens", "n", "seed", "top_logprobs"):
        _typed(body, name, int)
    # Value ranges are the provider's to judge (they differ between providers): only types are checked here.
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _number(body, name)
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
    # Element types are read at C speed (``map(type, ...)``): 100k token ids cost ~1 ms, not ~13 ms.
    kinds = set(map(type, value))
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
