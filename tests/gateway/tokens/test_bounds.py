"""Tests for gateway.tokens.bounds: the byte bound is never below the real count."""
from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.tokens.bounds import estimate, upper_bound, utf8_bytes
from gateway.tokens.tokenizer import Tokenizer

TOKENIZER = Tokenizer(cache_size=0)
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=200) | st.sampled_from(
    ["", " " * 300, "\n\n\t  x", "🎉🎉 中文 العربية", "a <|endoftext|> b", "\ud800 lone"])
parts = st.one_of(texts, st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
                  st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.just({"url": "x"})}))
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]),
     "content": texts | st.lists(parts, max_size=3)},
    optional={"name": texts,
              "tool_calls": st.lists(st.fixed_dictionaries(
                  {"function": st.fixed_dictionaries({"name": texts, "arguments": texts})}), max_size=2)}),
    max_size=5)
tools = st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": texts, "description": texts})}), max_size=2)
models = st.sampled_from(["gpt-4o", "gpt-4", "claude-3"])


@settings(max_examples=150, deadline=None)
@given(model=models, msgs=messages, tool_list=tools)
def test_chat_bound_is_at_least_the_count(model: str, msgs: list[Any], tool_list: list[Any]) -> None:
    body = {"model": model, "messages": msgs, "tools": tool_list}
    assert upper_bound("chat", body) >= TOKENIZER.count_request("chat", body)


@settings(max_examples=100, deadline=None)
@given(model=models, prompt=texts | st.lists(texts, max_size=4) | st.lists(st.integers(0, 99), max_size=5),
       op=st.sampled_from(["completions", "embeddings"]))
def test_input_bound_is_at_least_the_count(model: str, prompt: Any, op: str) -> None:
    body = {"model": model, "prompt": prompt, "input": prompt}
    assert upper_bound(op, body) >= TOKENIZER.count_request(op, body)


@settings(max_examples=100, deadline=None)
@given(model=models, instructions=texts, items=st.lists(texts | st.fixed_dictionaries(
    {"role": st.just("user"), "content": texts}), max_size=4))
def test_responses_bound_is_at_least_the_count(model: str, instructions: str, items: list[Any]) -> None:
    body = {"model": model, "instructions": instructions, "input": items}
    assert upper_bound("responses", body) >= TOKENIZER.count_request("responses", body)


def test_utf8_bytes_and_estimate() -> None:
    assert utf8_bytes("abc") == 3 and utf8_bytes("é") == 2
    assert utf8_bytes("🎉") == 4 and utf8_bytes("\ud800") == 3
    assert estimate(0) == 0 and estimate(1) == 1 and estimate(400) == 100
    assert upper_bound("other", {"messages": [{"content": "x"}]}) == 0
