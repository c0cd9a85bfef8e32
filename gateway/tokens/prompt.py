"""Count a request's prompt tokens once and share the figure.

Rate limiting (reservation), budgets, compression, usage estimation and the
ledger all need the prompt size; tokenising a 50k-token prompt costs
milliseconds, so it is done at most once per request and memoised on the
record. A policy that rewrites the messages (compression) must store the
new count with ``set_prompt_tokens`` so later layers see the real size.
"""
from __future__ import annotations

from gateway.appstate import AppState
from gateway.exchange import Exchange


def prompt_tokens(st: AppState, ex: Exchange) -> int:
    """The prompt's token count, counted once per request (``record.prompt_tokens``)."""
    cached = ex.record.prompt_tokens
    if cached is None:
        if ex.body is None or ex.request.operation not in ("chat", "completions", "embeddings", "responses"):
            cached = 0
        else:
            body = ex.body if "model" in ex.body else {**ex.body, "model": ex.target.model}
            cached = st.tokenizer.count_request(ex.request.operation, body)
        ex.record.prompt_tokens = cached
    return cached


def set_prompt_tokens(ex: Exchange, count: int) -> None:
    ex.record.prompt_tokens = count
