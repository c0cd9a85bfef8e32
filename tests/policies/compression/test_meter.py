"""The meter: per-message costs like the tokenizer's, each message counted once."""
from __future__ import annotations

from gateway.tokens.tokenizer import Tokenizer
from policies.compression.meter import Meter, tokenizer_meter
from tests.policies.compression.helpers import agent


def test_totals_match_the_tokenizer_request_count() -> None:
    """Meter totals equal Tokenizer.count_request for the same chat body (the prompt_tokens figure)."""
    tok = Tokenizer()
    messages = agent(3, lines=5)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    fixed = tok.count_tools("gpt-4o", tools)
    assert tokenizer_meter(tok, "gpt-4o", fixed).total(messages) == tok.count_request(
        "chat", {"model": "gpt-4o", "messages": messages, "tools": tools})


def test_each_message_object_is_counted_once() -> None:
    """A message seen again in another candidate list is not recounted."""
    seen: list[str] = []

    def count(text: str) -> int:
        seen.append(text)
        return len(text)

    meter = Meter(count)
    messages = agent(2, lines=2)
    first = meter.total(messages)
    calls = len(seen)
    assert meter.total(list(messages)) == first
    assert len(seen) == calls


def test_learned_text_is_not_counted_again() -> None:
    """A text the compressor built and counted is priced from what it learned."""
    meter = Meter(lambda text: 1000)
    meter.learn("made here", 7)
    assert meter.text("made here") == 7
    assert meter.cost({"role": "tool", "content": "made here"}) == 3 + 1000 + 7  # wrapper + role + content
