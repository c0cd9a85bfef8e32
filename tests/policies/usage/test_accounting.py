"""Token accounting at request end: estimates when the provider gave no usage, and cost."""
from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from gateway import produced
from gateway.exchange import Exchange, Usage
from gateway.produced import CAPTURE_KEY, Capture
from gateway.sse import StreamInspector
from gateway.tokens.tokenizer import Tokenizer
from policies.usage.accounting import make_finalizer
from policies.usage.config import PriceConfig

TEXT = "The quick brown fox jumps over the lazy dog, twice: the quick brown fox."


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


def state(tokenizer: Tokenizer, pricing: dict[str, PriceConfig] | None = None) -> Any:
    return SimpleNamespace(tokenizer=tokenizer, config=SimpleNamespace(pricing=pricing or {}))


def sse_capture(words: list[str]) -> Capture:
    cap = Capture(sse=True)
    cap.add(b'data: {"model":"gpt-4o-2024","choices":[{"delta":{"role":"assistant","content":""}}]}\n\n')
    for w in words:
        cap.add(b"data: " + orjson.dumps({"choices": [{"delta": {"content": w}}]}) + b"\n\n")
    return cap


def words_of(text: str) -> list[str]:
    parts = text.split(" ")
    return [parts[0]] + [" " + p for p in parts[1:]]


def test_stream_without_usage_is_estimated(tokenizer: Tokenizer,
                                           make_exchange: Callable[..., Exchange]) -> None:
    """Prompt from the request, completion from the produced deltas, both with the real tokenizer, marked."""
    ex = make_exchange(status=200)
    ex.state[CAPTURE_KEY] = sse_capture(words_of(TEXT))
    make_finalizer(state(tokenizer))(ex)
    expected = len(tokenizer.encoding("o200k_base").encode_ordinary(TEXT))
    assert ex.record.usage is not None and ex.record.usage.estimated
    assert ex.record.usage.completion == expected
    assert ex.record.usage.prompt == tokenizer.count_request("chat", ex.body)  # type: ignore[arg-type]
    assert ex.record.response_model == "gpt-4o-2024"


def test_escaped_text_is_unescaped(tokenizer: Tokenizer, make_exchange: Callable[..., Exchange]) -> None:
    """JSON escapes in deltas are decoded before counting."""
    ex = make_exchange(status=200)
    ex.state[CAPTURE_KEY] = sse_capture(['say "hi"\n', "caf\u00e9 \u2603"])
    make_finalizer(state(tokenizer))(ex)
    enc = tokenizer.encoding("o200k_base")
    assert ex.record.usage is not None
    assert ex.record.usage.completion == len(enc.encode_ordinary('say "hi"\n')) + len(
        enc.encode_ordinary("caf\u00e9 \u2603")
    )


def test_non_stream_answer_without_usage(tokenizer: Tokenizer,
                                         make_exchange: Callable[..., Exchange]) -> None:
    """A JSON answer is parsed once; message content and tool arguments are counted."""
    ex = make_exchange(status=200)
    cap = Capture(sse=False)
    body = {"model": "gpt-4o", "choices": [{"message": {"content": TEXT, "tool_calls": [
        {"function": {"name": "f", "arguments": '{"a": 1}'}}]}}]}
    raw = orjson.dumps(body)
    cap.add(raw[:20])
    cap.add(raw[20:])
    ex.state[CAPTURE_KEY] = cap
    make_finalizer(state(tokenizer))(ex)
    enc = tokenizer.encoding("o200k_base")
    assert ex.record.usage is not None
    assert ex.record.usage.completion == len(enc.encode_ordinary(TEXT)) + len(enc.encode_ordinary('{"a": 1}'))


def test_reported_usage_is_kept_and_priced(tokenizer: Tokenizer,
                                           make_exchange: Callable[..., Exchange]) -> None:
    """Provider usage is never replaced; cost uses the served model's price."""
    ex = make_exchange(status=200, usage=Usage(prompt=1000, completion=100))
    make_finalizer(state(tokenizer, {"gpt-4o": PriceConfig(input=2.0, output=8.0)}))(ex)
    assert not ex.record.usage.estimated and ex.record.usage.prompt == 1000  # type: ignore[union-attr]
    assert ex.record.cost_usd == pytest.approx(1000 * 2e-6 + 100 * 8e-6)


@pytest.mark.parametrize("kw", [{"status": 429}, {"status": 200, "source": "cache"}, {"status": 502},
                                {"status": 200, "operation": "passthrough"}])
def test_not_charged(tokenizer: Tokenizer, make_exchange: Callable[..., Exchange],
                     kw: dict[str, Any]) -> None:
    """Errors, cache answers and non-LLM requests are not estimated or priced."""
    ex = make_exchange(**kw)
    make_finalizer(state(tokenizer, {"gpt-4o": PriceConfig(input=1.0)}))(ex)
    assert ex.record.usage is None and ex.record.cost_usd is None


def test_partial_stream_charges_what_was_produced(tokenizer: Tokenizer,
                                                  make_exchange: Callable[..., Exchange]) -> None:
    """A stream cut after three deltas is charged for those three only."""
    ex = make_exchange(status=200, stream_outcome="client_gone")
    ex.state[CAPTURE_KEY] = sse_capture(["one", " two", " three"])
    make_finalizer(state(tokenizer))(ex)
    assert ex.record.usage is not None and ex.record.usage.completion == 3 and ex.record.usage.estimated


def test_capture_overflow_is_extrapolated(tokenizer: Tokenizer, make_exchange: Callable[..., Exchange],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the capture bound, the count scales with the content chunks the inspector saw."""
    monkeypatch.setattr(produced, "CAPTURE_LIMIT", 400)
    ex = make_exchange(status=200)
    cap = sse_capture([" word"] * 20)
    assert cap.overflow
    inspector = StreamInspector(lambda: 0.0)
    inspector.content_chunks = 20
    ex.state[CAPTURE_KEY] = cap
    ex.view = inspector
    make_finalizer(state(tokenizer))(ex)
    assert ex.record.usage is not None and ex.record.usage.completion == 20
