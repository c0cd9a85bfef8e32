"""Token accounting at the end of a request: estimate missing usage, price it.

The provider's own ``usage`` is the truth and is used whenever it arrived. It
is missing when a provider does not report it, or when a stream ended before
its final usage chunk (client gone, upstream reset, gateway shutdown): such a
request is still charged, for its prompt and for what was actually produced,
counted with the offline tokenizer and marked ``estimated``.

To count what was produced without parsing every chunk on the hot path, the
usage policy keeps references to the chunks it relayed (``Capture``, bounded;
beyond the bound the count is extrapolated by content chunks). They are only
read here, and only when usage is missing.

``finalize_usage`` runs as the first sink, so the log line, metrics, ledger and
trace sinks after it all see the same final ``ex.record.usage`` and cost.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from gateway.appstate import AppState
from gateway.exchange import Exchange, Usage
from gateway.produced import CAPTURE_KEY, Capture, produced_texts
from gateway.telemetry.pricing import cost_usd, price_for
from gateway.tokens.bounds import estimate, utf8_bytes
from gateway.tokens.prompt import loaded, prompt_tokens

LLM_OPERATIONS = frozenset({"chat", "completions", "embeddings", "responses"})
_MODEL = re.compile(rb'"model":\s*"([^"\\]{1,200})"')





def make_finalizer(st: AppState) -> Callable[[Exchange], None]:
    def finalize_usage(ex: Exchange) -> None:
        """Settle ``record.usage`` (reported, else estimated when chargeable) and ``record.cost_usd`` once."""
        rec = ex.record
        if rec.usage is None:
            rec.usage = rec.reported_usage
        if ex.request.operation not in LLM_OPERATIONS:
            return
        capture = ex.state.get(CAPTURE_KEY)
        if capture is not None and not rec.response_model and capture.chunks:
            found = _MODEL.search(capture.chunks[0], 0, 4096)
            if found:
                rec.response_model = found.group(1).decode(errors="replace")
        if rec.usage is None and chargeable(ex):
            rec.usage = estimate_usage(st, ex, capture)
        if rec.usage is not None and rec.source == "upstream":
            price = price_for(st.config.pricing, ex.target.model, ex.request.model)
            if price is not None:
                rec.cost_usd = cost_usd(price, rec.usage)

    return finalize_usage


def chargeable(ex: Exchange) -> bool:
    """An upstream accepted the request (2xx), so it billed the prompt and whatever it produced."""
    return ex.record.source == "upstream" and 200 <= ex.record.status < 300


def estimate_usage(st: AppState, ex: Exchange, capture: Capture | None) -> Usage:
    prompt = prompt_tokens(st, ex)
    completion = 0
    if capture is not None and capture.chunks and ex.request.operation != "embeddings":
        completion = completion_tokens(st, ex, capture)
    return Usage(prompt=prompt, completion=completion, estimated=True)


def completion_tokens(st: AppState, ex: Exchange, capture: Capture) -> int:
    texts, pieces = produced_texts(ex.request.operation, capture)
    if not texts:
        return 0
    tokenizer = st.tokenizer
    model = ex.target.model or ex.request.model
    if not loaded(st, model):  # an estimate rather than loading an encoding on the loop
        return estimate(sum(utf8_bytes(text) for text in texts if text))
    encoding = tokenizer.encoding(tokenizer.encoding_name_for(model))
    # Straight to the encoding: completions are unique text, the prompt memo would only churn.
    count = sum(len(encoding.encode_ordinary(text)) for text in texts if text)
    inspector = ex.view
    if capture.overflow and inspector is not None and pieces and inspector.content_chunks > pieces:
        count = round(count * inspector.content_chunks / pieces)  # extrapolate past the capture bound
    return count
