"""A cheap upper bound on a request's prompt tokens: UTF-8 bytes instead of BPE tokens.

Every tiktoken token covers at least one byte of UTF-8, so a text's byte length bounds its
token count from above; walking the body with that count (the same body-shape rules as
:mod:`gateway.tokens.request`, the same per-message overheads) bounds the whole prompt. It
looks at each string once (``str.isascii`` is O(1) in CPython, so ASCII text costs nothing),
which is what the event loop can afford for any body size. Callers use it to skip exact
counting when the bound already answers (a 40 KB prompt cannot exceed a 128k window) and to
decide whether exact counting runs inline or in the work pool.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.tokens.request import count_messages, count_responses, count_token_input, count_tools


def utf8_bytes(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (lone surrogates count 3, as tiktoken's replacement char does)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def upper_bound(operation: str, body: Mapping[str, Any]) -> int:
    """An upper bound on ``Tokenizer.count_request(operation, body)``; 0 for other operations."""
    count = utf8_bytes
    if operation == "chat":
        return (count_messages(count, body.get("messages")) + count_tools(count, body.get("tools"))
                + count_tools(count, body.get("functions")))
    if operation == "completions":
        suffix = body.get("suffix")
        extra = count(suffix) if isinstance(suffix, str) else 0
        return count_token_input(count, body.get("prompt")) + extra
    if operation == "embeddings":
        return count_token_input(count, body.get("input"))
    if operation == "responses":
        return count_responses(count, body)
    return 0


def estimate(bound: int) -> int:
    """A count for when exact counting was not possible: ~4 bytes a token for English text,
    never more than the bound (whitespace and symbols tokenise worse, so this may undercount)."""
    return min(bound, max(1, (bound + 3) // 4)) if bound else 0
