"""Usage readers: every provider shape, tolerant of junk."""
from __future__ import annotations

import orjson
import pytest

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


def _balanced_reference(data: bytes) -> object:
    """The tail search as it was before its fast path: the balanced object after the last ``"usage"``
    key (within 4096 bytes of its brace), parsed; None when there is none."""
    at = data.rfind(b'"usage"')
    start = data.find(b"{", at) if at >= 0 else -1
    if start < 0 or data[at + 7:start].strip(b" \t\r\n:"):
        return None
    depth, in_str, escaped = 0, False, False
    for i in range(start, min(len(data), start + 4096)):
        c = data[i]
        if in_str:
            escaped, in_str = (False, in_str) if escaped else (c == 0x5C, c != 0x22)
        elif c == 0x22:
            in_str = True
        elif c in (0x7B, 0x7D):
            depth += 1 if c == 0x7B else -1
            if depth == 0:
                try:
                    return usage_from_obj(orjson.loads(data[start:i + 1]))
                except orjson.JSONDecodeError:
                    return None
    return None


_U = b'"usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1}}'


@pytest.mark.parametrize("body", [
    b'{"choices":[],' + _U + b'}',  # usage last: the fast path
    b'{"choices":[],' + _U + b'}\n',
    b'{' + _U + b',"model":"m"}',  # usage not last
    b'{' + _U + b',"x":{"y":"}"}}',  # a brace in a later string
    b'{"a":"\\"usage\\":{}",' + _U + b'}',  # an escaped key in a string before it
    b'{"choices":[],"usage":{"prompt_tokens":3,"note":"} {\\"}"}}',  # braces and escapes inside usage
    b'{"choices":[],"usage":{"prompt_tokens":3,"bad":NaN}}',  # balanced, not JSON
    b'{"choices":[],"usage":{"prompt_tokens":3',  # cut
    b'{"choices":[],"usage":{"prompt_tokens":3,"pad":"' + b"x" * 5000 + b'"}}',  # past the window
    b'{"choices":[],"usage":{"prompt_tokens":3,"pad":"' + b"x" * 4000 + b'"}}',  # just inside it
    b'{"usage":{}}}}',
    b'{"usage":{"prompt_tokens":2}}{"usage":{"prompt_tokens":5}}',
    b'{"usage": {"prompt_tokens": 7, "completion_tokens": 1} }',
])
def test_tail_search_fast_path_agrees_with_the_balanced_scan(body: bytes) -> None:
    """The fast path (usage closed by the brace before the body's last) answers exactly as the balanced
    scan does, including where it must give up (not JSON, cut, past its window)."""
    assert usage_from_json_bytes(body) == _balanced_reference(body)
