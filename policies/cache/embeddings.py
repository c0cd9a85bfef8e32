"""Per-input embeddings cache helpers: input normalisation, keys, token split, reassembly.

Each input string (or token array) is cached on its own, keyed by tenant
namespace, upstream, model, ``dimensions`` and ``encoding_format``, so a batch
of 100 chunks with 90 seen before sends only 10 upstream. The stored value is
the provider's own JSON for that vector (a float list or a base64 string), so a
reassembled answer is byte-for-byte what the provider sent for each input.
Usage: an input's token count is exact when it was sent alone; when it came in
a batch, the batch's reported total is split over its inputs in proportion to
their tokenizer counts (largest remainder, so the parts add up exactly).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from gateway.exchange import Exchange
from gateway.right_size import right_sized
from policies.cache.keys import CacheKey, make_key

Input = str | list[int]


def inputs_of(body: dict[str, Any]) -> list[Input] | None:
    """The inputs as a list, or None for anything this cache does not handle."""
    value = body.get("input")
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            return [value]
        if all(
            (isinstance(v, str) and v) or (isinstance(v, list) and v and all(isinstance(t, int) for t in v))
            for v in value
        ):
            return list(value)
    return None


def params_of(body: dict[str, Any]) -> dict[str, Any]:
    """Everything but the input and the model: part of every per-input key."""
    return {k: v for k, v in body.items() if k not in ("input", "model", "user")}


def input_key(ex: Exchange, version: str, params: dict[str, Any], item: Input) -> CacheKey:
    return make_key(namespace=ex.request.namespace, upstream=ex.target.upstream, model=ex.target.model,
                    operation="embedding", config_version=version, fields=[params, item])


def split_tokens(total: int, items: Sequence[Input], count: Callable[[str], int]) -> list[int]:
    """Share ``total`` over ``items`` by their own token counts; the parts add up to ``total``."""
    if len(items) == 1:
        return [total]
    weights = [len(i) if isinstance(i, list) else max(1, count(i)) for i in items]
    scale = total / sum(weights)
    raw = [w * scale for w in weights]
    parts = [int(r) for r in raw]
    order = sorted(range(len(items)), key=lambda i: raw[i] - parts[i], reverse=True)
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def parse_answer(data: bytes, n: int) -> tuple[list[bytes], int] | None:
    """(the JSON of each vector in input order, prompt tokens) from a provider answer, or None."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    rows = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(rows, list) or len(rows) != n:
        return None
    vectors: list[bytes | None] = [None] * n
    for row in rows:
        index = row.get("index") if isinstance(row, dict) else None
        if not isinstance(index, int) or not 0 <= index < n or "embedding" not in row:
            return None
        vectors[index] = right_sized(orjson.dumps(row["embedding"]))  # kept in the cache
    if any(v is None for v in vectors):
        return None
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
    tokens = usage.get("prompt_tokens")
    return [v for v in vectors if v is not None], tokens if isinstance(tokens, int) else 0


def shares(data: bytes, items: Sequence[Input],
           count: Callable[[str], int]) -> tuple[list[bytes], list[int]] | None:
    """Each input's vector (JSON) and share of the answer's prompt tokens; None for an unusable answer."""
    parsed = parse_answer(data, len(items))
    if parsed is None:
        return None
    vectors, total = parsed
    return vectors, split_tokens(total, items, count)


def rough_count(text: str) -> int:
    """A share weight without the tokenizer (the work pool was busy): about 4 characters a token."""
    return max(1, len(text) // 4)


def text_bytes(items: Sequence[Input]) -> int:
    return sum(len(i) for i in items if isinstance(i, str))


def assemble(model: str, vectors: Sequence[bytes], tokens: int) -> bytes:
    data = [{"object": "embedding", "index": i,
             "embedding": orjson.Fragment(v)} for i, v in enumerate(vectors)]
    return orjson.dumps({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
