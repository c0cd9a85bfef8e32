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
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.appstate import AppState
from gateway.exchange import Exchange, StateKey, Usage
from gateway.tokens.prompt import prompt_tokens
from policies.usage.pricing import cost_usd, price_for

LLM_OPERATIONS = frozenset({"chat", "completions", "embeddings", "responses"})
CAPTURE_LIMIT = 256 * 1024  # bytes of relayed body kept per request for estimation
_STRING = rb'"((?:[^"\\]|\\.)*)"'
# What a model produced, per operation, in stream chunks. Responses API streams repeat the full
# text in their *.done events, so only their deltas count.
_PRODUCED: dict[str, re.Pattern[bytes]] = {
    "chat": re.compile(rb'"(?:content|reasoning_content|refusal|arguments)":' + _STRING),
    "completions": re.compile(rb'"text":' + _STRING),
    "responses": re.compile(rb'"delta":' + _STRING),
}
_MODEL = re.compile(rb'"model":\s*"([^"\\]{1,200})"')


@dataclass(slots=True)
class Capture:
    """References to the chunks relayed for one request (no copies), up to ``CAPTURE_LIMIT`` bytes."""

    sse: bool
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    overflow: bool = False

    def add(self, chunk: bytes) -> None:
        if self.size < CAPTURE_LIMIT:
            self.chunks.append(chunk)
            self.size += len(chunk)
        else:
            self.overflow = True

    def keep(self, chunk: bytes) -> bytes:
        """``add`` as a body filter: the chunk passes unchanged."""
        self.add(chunk)
        return chunk

    def data(self) -> bytes:
        return b"".join(self.chunks)


CAPTURE_KEY: StateKey[Capture] = StateKey("usage.capture")  # set by the usage layer, read by finalize


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
    encoding = tokenizer.encoding(tokenizer.encoding_name_for(ex.target.model or ex.request.model))
    # Straight to the encoding: completions are unique text, the prompt memo would only churn.
    count = sum(len(encoding.encode_ordinary(text)) for text in texts if text)
    inspector = ex.view
    if capture.overflow and inspector is not None and pieces and inspector.content_chunks > pieces:
        count = round(count * inspector.content_chunks / pieces)  # extrapolate past the capture bound
    return count


def produced_texts(operation: str, capture: Capture) -> tuple[list[str], int]:
    data = capture.data()
    if capture.sse:
        pattern = _PRODUCED.get(operation)
        if pattern is None:
            return [], 0
        texts = [_unescape(m.group(1)) for m in pattern.finditer(data) if m.group(1)]  # not role chunks' ""
        return texts, len(texts)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [], 0  # a cut non-stream body: nothing usable was produced for the client
    texts = _texts_of_answer(obj)
    return texts, len(texts)


def _texts_of_answer(obj: Any) -> list[str]:
    """Generated text in a non-stream answer: chat messages, completion texts, Responses output."""
    texts: list[str] = []
    if not isinstance(obj, dict):
        return texts
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            _add_str(texts, message.get("content"))
            _add_str(texts, message.get("reasoning_content"))
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    _add_str(texts, call["function"].get("arguments"))
        _add_str(texts, choice.get("text"))
    for item in obj.get("output") or ():
        if not isinstance(item, dict):
            continue
        _add_str(texts, item.get("arguments"))
        for part in item.get("content") or ():
            if isinstance(part, dict):
                _add_str(texts, part.get("text"))
    return texts


def _add_str(texts: list[str], value: Any) -> None:
    if isinstance(value, str) and value:
        texts.append(value)


def _unescape(raw: bytes) -> str:
    if b"\\" not in raw:
        return raw.decode(errors="replace")
    try:
        return str(orjson.loads(b'"' + raw + b'"'))
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")
