"""Deterministic content generation for the mock upstream.

Everything here is a pure function of (seed, request content) so that tests can
compare stream vs. non-stream answers, caches can be exercised with repeatable
outputs, and benchmarks are reproducible run to run.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import re
import struct
from dataclasses import dataclass
from typing import Any

import orjson

VOCABULARY: tuple[str, ...] = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "gateway", "request",
    "stream", "token", "model", "answer", "river", "mountain", "cloud", "signal", "vector", "garden",
    "window", "matrix", "orbit", "silver", "copper", "quiet", "bright", "simple", "rapid", "gentle",
    "latency", "budget", "policy", "route", "cache", "ledger", "harbor", "pixel", "lantern", "meadow",
    "compass", "engine", "thread", "socket", "packet", "channel", "beacon", "canyon", "forest", "island",
    "is", "and", "with", "from", "into", "under", "every", "some", "many", "few",
    "runs", "builds", "reads", "writes",
)  # fmt: skip

_TOOL_WORD = re.compile(r"\btool", re.IGNORECASE)


def derive_seed(seed: int, *parts: Any) -> int:
    """64-bit seed from the config seed and canonical JSON of the request content."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(seed).encode())
    for part in parts:
        h.update(b"\x00")
        h.update(orjson.dumps(part, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS))
    return int.from_bytes(h.digest(), "big")


def text_pieces(rng_seed: int, n: int) -> list[str]:
    """`n` word pieces ("Word", " word", ...); a shorter `n` yields a prefix of a longer one."""
    rng = random.Random(rng_seed)
    pieces: list[str] = []
    for i in range(n):
        word = rng.choice(VOCABULARY)
        pieces.append(word.capitalize() if i == 0 else " " + word)
    return pieces


def content_text(content: Any) -> str:
    """Text of a chat/responses `content` value (string, or list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(texts)
    return ""


def estimate_prompt_tokens(texts: list[str]) -> int:
    """Mock tokenizer: chars // 4 plus 4 per message, at least 1 (cheap and deterministic)."""
    return max(1, sum(len(t) for t in texts) // 4 + 4 * len(texts))


NATURAL_MAX_TOKENS = 4096


def completion_length(
    *, max_tokens: int | None, default_tokens: int, header_tokens: int | None
) -> tuple[int, bool]:
    """(number of content pieces, whether the max_tokens limit was what stopped it).

    A model stops by itself eventually: answers end naturally at ``NATURAL_MAX_TOKENS``,
    so a huge ``max_tokens`` cannot make the fake provider generate gigabytes.
    """
    n = max_tokens if max_tokens is not None else default_tokens
    if header_tokens is not None and header_tokens < n:
        return max(header_tokens, 1), False
    if n > NATURAL_MAX_TOKENS:
        return NATURAL_MAX_TOKENS, False
    return max(n, 1), max_tokens is not None


def last_user_text(messages: list[Any]) -> str | None:
    """Text of the last message if it is a user message, else None."""
    if not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role", "user") != "user":
        return None
    return content_text(last.get("content"))


def mentions_tool(text: str | None) -> bool:
    return bool(text) and _TOOL_WORD.search(text or "") is not None


# --- tool calls -----------------------------------------------------------------


def function_tools(tools: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, parameters schema) of the function tools in chat or Responses format."""
    out: list[tuple[str, dict[str, Any]]] = []
    if not isinstance(tools, list):
        return out
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        function = tool.get("function")
        fn: dict[str, Any] = function if isinstance(function, dict) else tool
        name = fn.get("name")
        if isinstance(name, str):
            params = fn.get("parameters")
            out.append((name, params if isinstance(params, dict) else {}))
    return out


def tool_arguments(rng_seed: int, schema: dict[str, Any]) -> str:
    """Deterministic JSON arguments that follow the tool's schema when it has properties."""
    rng = random.Random(rng_seed)
    props = schema.get("properties")
    if isinstance(props, dict) and props:
        args = {name: _value_for(rng, prop, depth=0) for name, prop in props.items()}
    else:
        args = {"query": _words(rng, 3), "n": rng.randint(1, 5)}
    return orjson.dumps(args).decode()


def _value_for(rng: random.Random, prop: Any, depth: int) -> Any:
    if not isinstance(prop, dict):
        return _words(rng, 2)
    if isinstance(prop.get("enum"), list) and prop["enum"]:
        return prop["enum"][rng.randrange(len(prop["enum"]))]
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "integer":
        return rng.randint(1, 10)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return [] if depth > 2 else [_value_for(rng, prop.get("items"), depth + 1)]
    if kind == "object":
        sub = prop.get("properties") if depth <= 2 else None
        return {k: _value_for(rng, v, depth + 1) for k, v in sub.items()} if isinstance(sub, dict) else {}
    return _words(rng, 2)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(n))


def split_arguments(rng_seed: int, arguments: str) -> list[str]:
    """Split an arguments string into 3-8 char pieces, like OpenAI's streamed tool calls."""
    rng = random.Random(rng_seed ^ 0x5EED)
    pieces: list[str] = []
    i = 0
    while i < len(arguments):
        step = rng.randint(3, 8)
        pieces.append(arguments[i : i + step])
        i += step
    return pieces or [""]


def tool_call_id(rng_seed: int, index: int, prefix: str = "call_") -> str:
    """Deterministic id so stream and non-stream answers for the same request are identical."""
    digest = hashlib.blake2b(f"{rng_seed}:{index}:{prefix}".encode(), digest_size=12).hexdigest()
    return prefix + digest


# --- embeddings -----------------------------------------------------------------

EMBEDDING_DIMS: dict[str, int] = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}
DEFAULT_EMBEDDING_DIMS = 1536


def embedding_vector(model: str, text: str, dims: int) -> list[float]:
    """Unit vector seeded by (model, input text) only, so an input's vector never depends on its position.

    Values are rounded to float32 so the float and base64 encodings agree exactly.
    """
    seed = int.from_bytes(hashlib.blake2b(f"{model}\x00{text}".encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    raw = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    packed = struct.pack(f"<{dims}f", *(v / norm for v in raw))
    return list(struct.unpack(f"<{dims}f", packed))


def encode_base64_f32(vector: list[float]) -> str:
    """OpenAI's `encoding_format: base64`: little-endian float32, base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# --- tool-call planning -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallPlan:
    """One tool call the mock will answer with; `pieces` is how its arguments stream."""

    index: int
    call_id: str
    name: str
    arguments: str
    pieces: tuple[str, ...]


def plan_tool_calls(
    *, seed: int, tools: Any, tool_choice: Any, last_user: str | None, header_count: int | None
) -> list[ToolCallPlan]:
    """Decide whether to answer with tool calls, and build them deterministically.

    Triggers (when function tools exist and tool_choice != "none"): a named or
    "required" tool_choice, the `x-mock-tool-calls: N` header, or a last user
    message mentioning "tool".  `x-mock-tool-calls: 0` forces a text answer.
    """
    functions = function_tools(tools)
    if not functions or tool_choice == "none" or header_count == 0:
        return []
    named = _named_choice(tool_choice)
    triggered = (
        named is not None or tool_choice == "required" or header_count is not None or mentions_tool(last_user)
    )
    if not triggered:
        return []
    schemas = dict(functions)
    name = named if named is not None else functions[0][0]
    plans: list[ToolCallPlan] = []
    for i in range(header_count or 1):
        call_seed = derive_seed(seed, "tool", i)
        arguments = tool_arguments(call_seed, schemas.get(name, {}))
        plans.append(
            ToolCallPlan(
                index=i,
                call_id=tool_call_id(call_seed, i),
                name=name,
                arguments=arguments,
                pieces=tuple(split_arguments(call_seed, arguments)),
            )
        )
    return plans


def _named_choice(tool_choice: Any) -> str | None:
    """Function name from chat (`{"function": {"name"}}`) or Responses (`{"name"}`) tool_choice."""
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function":
        return None
    fn = tool_choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else tool_choice.get("name")
    return name if isinstance(name, str) else None
