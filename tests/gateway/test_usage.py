"""Usage readers: every provider shape, tolerant of junk."""
from __future__ import annotations

import orjson

from gateway.usage import usage_from_json_bytes, usage_from_obj, usage_from_response_obj


def test_chat_usage_with_details() -> None:
    """prompt/completion with cached and reasoning details."""
    u = usage_from_obj(
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        }
    )
    assert u is not None and (u.prompt, u.completion, u.cached_prompt, u.reasoning, u.total) == (
        10,
        5,
        4,
        2,
        15,
    )


def test_responses_usage_shape() -> None:
    """input/output tokens of the Responses API, nested under response."""
    u = usage_from_response_obj({"response": {"usage": {"input_tokens": 3, "output_tokens": 9,
                                                        "input_tokens_details": {"cached_tokens": 1}}}})
    assert u is not None and (u.prompt, u.completion, u.cached_prompt) == (3, 9, 1)


def test_junk_is_none_not_an_error() -> None:
    """Malformed usage yields None."""
    assert usage_from_obj(None) is None
    assert usage_from_obj({"prompt_tokens": "x"}) is None
    assert usage_from_json_bytes(b'{"usage": [1,2]}') is None
    assert usage_from_json_bytes(b"not json") is None


def test_usage_from_large_body_reads_only_the_tail() -> None:
    """An embeddings body with a big data array: usage is found at the end."""
    body = orjson.dumps({"data": [{"embedding": [0.1] * 2000, "note": '"usage" in text'}] * 50,
                         "usage": {"prompt_tokens": 42, "total_tokens": 42}})
    u = usage_from_json_bytes(body)
    assert u is not None and u.prompt == 42 and u.completion == 0


def test_deepseek_cache_hits_and_groq_x_groq() -> None:
    """DeepSeek's prompt_cache_hit_tokens is the cached part; Groq's stream usage sits under x_groq."""
    u = usage_from_obj({"prompt_tokens": 20, "completion_tokens": 4, "prompt_cache_hit_tokens": 16,
                        "prompt_cache_miss_tokens": 4})
    assert u is not None and (u.prompt, u.cached_prompt) == (20, 16)
    g = usage_from_response_obj({"choices": [], "x_groq": {"id": "r", "usage": {"prompt_tokens": 5,
                                                                              "completion_tokens": 6}}})
    assert g is not None and (g.prompt, g.completion) == (5, 6)
