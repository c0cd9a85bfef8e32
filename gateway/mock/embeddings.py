"""`POST /v1/embeddings` with deterministic unit vectors.

The official SDK asks for `encoding_format: base64` unless told otherwise and
decodes little-endian float32 itself, so both encodings must be served exactly.
Vectors depend only on (model, input), which is what embedding caches rely on.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .context import RequestContext
from .errors import MockHTTPError
from .generate import DEFAULT_EMBEDDING_DIMS, EMBEDDING_DIMS, embedding_vector, encode_base64_f32
from .stream import send_json

MAX_DIMENSIONS = 8192


def embedding_inputs(body: Any) -> list[str | list[int]]:
    """Normalise `input`: string, list of strings, token array, or list of token arrays."""
    value = body.get("input") if isinstance(body, dict) else None
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
    raise MockHTTPError(400, "'$.input' is invalid. Please check the API reference.", param="input")


def _input_key(item: str | list[int]) -> str:
    """Token arrays get a stable textual key so they also map to a fixed vector."""
    return item if isinstance(item, str) else "tokens:" + ",".join(map(str, item))


def _input_tokens(item: str | list[int]) -> int:
    return len(item) if isinstance(item, list) else max(1, len(item) // 4)


def embeddings_request_tokens(body: Any, default_tokens: int) -> int:
    del default_tokens  # embeddings have no completion
    try:
        return sum(_input_tokens(i) for i in embedding_inputs(body))
    except MockHTTPError:
        return 1


def _dimensions(body: dict[str, Any], model: str) -> int:
    dims = body.get("dimensions")
    if dims is None:
        return EMBEDDING_DIMS.get(model, DEFAULT_EMBEDDING_DIMS)
    if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= MAX_DIMENSIONS:
        raise MockHTTPError(
            400, f"'dimensions' must be an integer between 1 and {MAX_DIMENSIONS}.", param="dimensions"
        )
    return dims


async def handle_embeddings(ctx: RequestContext) -> web.StreamResponse:
    body = ctx.json_body()
    model = ctx.require_model()
    inputs = embedding_inputs(body)
    dims = _dimensions(body, model)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise MockHTTPError(400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    data = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(model, _input_key(item), dims)
        encoded: list[float] | str = encode_base64_f32(vector) if fmt == "base64" else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    payload: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if not ctx.no_usage:
        tokens = sum(_input_tokens(i) for i in inputs)
        payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return await send_json(ctx, payload, n_tokens=1)
