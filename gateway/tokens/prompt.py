"""Count a request's prompt tokens once and share the figure.

Rate limiting (reservation), budgets, compression, usage estimation and the
ledger all need the prompt size; tokenising a 50k-token prompt costs
milliseconds, so it is done at most once per request and memoised on the
exchange. A policy that rewrites the messages (compression) must store the
new count with ``set_prompt_tokens`` so later layers see the real size.
"""
from __future__ import annotations

from gateway.appstate import AppState
from gateway.exchange import Exchange

_KEY = "prompt_tokens"


def prompt_tokens(st: AppState, ex: Exchange) -> int:
    cached = ex.attrs.get(_KEY)
    if cached is None:
        if ex.body is None or ex.operation not in ("chat", "completions", "embeddings", "responses"):
            cached = 0
        else:
            body = ex.body if "model" in ex.body else {**ex.body, "model": ex.upstream_model}
            cached = st.tokenizer.count_request(ex.operation, body)
        ex.attrs[_KEY] = cached
    return int(cached)


def set_prompt_tokens(ex: Exchange, count: int) -> None:
    ex.attrs[_KEY] = count
