"""Tests for gateway.tokens.tokenizer: offline encodings, counting rules, memo and mapping."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.tokens.bpe import BPE_FILES, BpeFileError, build_encoding, parse_mergeable_ranks, read_bpe_file
from gateway.tokens.request import REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE, TOKENS_PER_NAME
from gateway.tokens.tokenizer import (
    CL100K_BASE,
    DEFAULT_ENCODING,
    IMAGE_PART_TOKENS,
    O200K_BASE,
    Tokenizer,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
DATA_DIR = REPO_ROOT / "gateway" / "data" / "tiktoken"
ENCODINGS = (CL100K_BASE, O200K_BASE)
TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"

SAMPLES = (
    "hello world",
    "tiktoken is great!",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\n\n",
    "Ünïcödé, emoji 🎉🎉, 中文, العربية, and   odd    spacing\t\r\n",
    "a <|endoftext|> b <|fim_prefix|> c",
    "x" * 5000,
    "lone \ud800 surrogate and a long tail " * 3,
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    tokenizer = Tokenizer()
    tokenizer.preload()
    return tokenizer


@pytest.fixture(scope="module")
def plain_tok() -> Tokenizer:
    """A tokenizer with the memo disabled, to check memoised counts against."""
    tokenizer = Tokenizer(cache_size=0)
    tokenizer.preload()
    return tokenizer


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tiktoken.Encoding]]:
    """tiktoken's own loading path (its cache + parser + constructors), fed the shipped
    files under the cache names tiktoken expects, so no network is needed."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name in ENCODINGS:
        key = hashlib.sha1(TIKTOKEN_URL.format(name).encode()).hexdigest()
        shutil.copyfile(DATA_DIR / f"{name}.tiktoken", cache / key)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield {name: tiktoken.get_encoding(name) for name in ENCODINGS}


# --- shipped files and loading -------------------------------------------------------


@pytest.mark.parametrize("name", ENCODINGS)
def test_shipped_file_matches_tiktoken_pinned_hash(name: str) -> None:
    data = (DATA_DIR / f"{name}.tiktoken").read_bytes()
    assert hashlib.sha256(data).hexdigest() == BPE_FILES[name].sha256
    source = Path(sys.modules["tiktoken_ext.openai_public"].__file__ or "").read_text()
    assert f'expected_hash="{BPE_FILES[name].sha256}"' in source


@pytest.mark.parametrize("name", ENCODINGS)
def test_encoding_equals_tiktoken_reference(
    tok: Tokenizer, reference: dict[str, tiktoken.Encoding], name: str
) -> None:
    ours, ref = tok.encoding(name), reference[name]
    assert (ours.name, ours.n_vocab, ours._pat_str) == (ref.name, ref.n_vocab, ref._pat_str)
    assert ours._special_tokens == ref._special_tokens
    assert parse_mergeable_ranks(read_bpe_file(name)) == ref._mergeable_ranks


@pytest.mark.parametrize("model", ["gpt-4", "gpt-4o"])
@pytest.mark.parametrize("text", SAMPLES)
def test_counts_match_tiktoken(
    tok: Tokenizer, reference: dict[str, tiktoken.Encoding], model: str, text: str
) -> None:
    ref = reference[tok.encoding_name_for(model)]
    assert tok.count_text(model, text) == len(ref.encode(text, disallowed_special=()))


@pytest.mark.parametrize(
    ("text", "cl100k", "o200k"),
    [
        ("hello world", 2, 2),
        ("tiktoken is great!", 6, 6),
        ("antidisestablishmentarianism", 6, 6),
        ("2 + 2 = 4", 7, 7),
        ("お誕生日おめでとう", 9, 8),
        ("", 0, 0),
    ],
)
def test_known_counts(tok: Tokenizer, text: str, cl100k: int, o200k: int) -> None:
    # Values from OpenAI's cookbook "How to count tokens with tiktoken".
    assert tok.count_text("gpt-4", text) == cl100k
    assert tok.count_text("gpt-4o", text) == o200k


def test_special_token_text_is_plain_text(tok: Tokenizer) -> None:
    assert tok.count_text("gpt-4o", "<|endoftext|>") == 7
    assert tok.count_text("gpt-4", "<|endoftext|><|endofprompt|>") > 2


def test_corrupt_file_is_refused() -> None:
    data = bytearray(read_bpe_file(CL100K_BASE))
    data[10] ^= 1
    with pytest.raises(BpeFileError, match="sha256 mismatch"):
        build_encoding(CL100K_BASE, bytes(data))
    with pytest.raises(BpeFileError, match="no shipped BPE file"):
        build_encoding("p50k_base", b"")


def test_parse_mergeable_ranks_rejects_malformed() -> None:
    assert parse_mergeable_ranks(b"YQ== 0\nYg== 1\n") == {b"a": 0, b"b": 1}
    with pytest.raises(BpeFileError):
        parse_mergeable_ranks(b"YQ== 0\nYg==\n")
    with pytest.raises(BpeFileError):
        parse_mergeable_ranks(b"YQ== 0\nYQ== 1\n")


def test_works_with_network_blocked(tok: Tokenizer, tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    script = textwrap.dedent(
        """
        import socket

        def blocked(*args, **kwargs):
            raise OSError("network access attempted")

        socket.socket.connect = blocked
        socket.create_connection = blocked
        socket.getaddrinfo = blocked

        from gateway.tokens.tokenizer import Tokenizer

        tok = Tokenizer()
        print(tok.count_text("gpt-4", "hello world <|endoftext|>"), tok.count_text("gpt-4o", "hello world"))
        """
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("DATA_GYM_CACHE_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    expected = [tok.count_text("gpt-4", "hello world <|endoftext|>"), tok.count_text("gpt-4o", "hello world")]
    assert result.stdout.split() == [str(n) for n in expected]
    assert list(cache.iterdir()) == []


# --- model -> encoding ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", O200K_BASE),
        ("gpt-4o-mini-2024-07-18", O200K_BASE),
        ("chatgpt-4o-latest", O200K_BASE),
        ("gpt-4.1-nano", O200K_BASE),
        ("gpt-5", O200K_BASE),
        ("gpt-5-mini", O200K_BASE),
        ("o1", O200K_BASE),
        ("o3-mini", O200K_BASE),
        ("o4-mini-2025-04-16", O200K_BASE),
        ("gpt-oss-120b", O200K_BASE),
        ("gpt-4", CL100K_BASE),
        ("gpt-4-turbo-2024-04-09", CL100K_BASE),
        ("gpt-4-32k", CL100K_BASE),
        ("gpt-3.5-turbo", CL100K_BASE),
        ("gpt-35-turbo", CL100K_BASE),
        ("text-embedding-3-small", CL100K_BASE),
        ("text-embedding-ada-002", CL100K_BASE),
        ("davinci-002", CL100K_BASE),
        ("babbage-002", CL100K_BASE),
        ("openai/gpt-4", CL100K_BASE),
        ("azure/eu/gpt-3.5-turbo", CL100K_BASE),
        ("openai/gpt-oss-20b", O200K_BASE),
        ("ft:gpt-3.5-turbo-0125:acme::abc123", CL100K_BASE),
        ("ft:gpt-4o-mini-2024-07-18:acme:custom:xyz", O200K_BASE),
        ("openai/ft:gpt-4-0613:acme::q1", CL100K_BASE),
        ("  GPT-4  ", CL100K_BASE),
        ("claude-3-5-sonnet", DEFAULT_ENCODING),
        ("llama-3.1-70b", DEFAULT_ENCODING),
        ("", DEFAULT_ENCODING),
    ],
)
def test_encoding_name_for(tok: Tokenizer, model: str, encoding: str) -> None:
    assert tok.encoding_name_for(model) == encoding


def test_default_encoding_is_o200k() -> None:
    assert DEFAULT_ENCODING == O200K_BASE


def test_model_overrides() -> None:
    tok = Tokenizer({"my-proxy-model": "cl100k_base", "gpt-4o": "cl100k_base"})
    assert tok.encoding_name_for("my-proxy-model") == CL100K_BASE
    assert tok.encoding_name_for("openai/gpt-4o") == CL100K_BASE
    assert tok.encoding_name_for("gpt-4o-mini") == O200K_BASE
    with pytest.raises(ValueError, match="unknown encoding"):
        Tokenizer({"m": "p50k_base"})


# --- chat messages -------------------------------------------------------------------

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates "
        "corporate jargon into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo-0613", 129), ("gpt-4-0613", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_cookbook_example_matches_api_counts(tok: Tokenizer, model: str, expected: int) -> None:
    # The cookbook lists these as the prompt_tokens the OpenAI API reported.
    assert tok.count_messages(model, COOKBOOK_MESSAGES) == expected


def test_simple_chat(tok: Tokenizer) -> None:
    c = lambda s: tok.count_text("gpt-4o", s)  # noqa: E731
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi", "name": "bob"}]
    expected = (
        2 * TOKENS_PER_MESSAGE
        + c("system")
        + c("Be brief.")
        + c("user")
        + c("Hi")
        + c("bob")
        + TOKENS_PER_NAME
        + REPLY_PRIMING_TOKENS
    )
    assert tok.count_messages("gpt-4o", messages) == expected
    assert tok.count_messages("gpt-4o", []) == 0


def test_parts_content(tok: Tokenizer) -> None:
    c = lambda s: tok.count_text("gpt-4o", s)  # noqa: E731
    parts = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "text", "text": "Answer briefly."},
    ]
    count = tok.count_messages("gpt-4o", [{"role": "user", "content": parts}])
    text = c("What is in this image?") + c("Answer briefly.")
    assert count == TOKENS_PER_MESSAGE + c("user") + text + 2 * IMAGE_PART_TOKENS + REPLY_PRIMING_TOKENS


def test_tool_calls_and_tool_messages(tok: Tokenizer) -> None:
    c = lambda s: tok.count_text("gpt-4o", s)  # noqa: E731
    args = '{"city": "Paris", "unit": "celsius"}'
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }
    tool = {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}
    assert tok.count_messages("gpt-4o", [assistant]) == (
        TOKENS_PER_MESSAGE + c("assistant") + c("get_weather") + c(args) + c("get_time") + c("{}") + 3
    )
    assert tok.count_messages("gpt-4o", [tool]) == (
        TOKENS_PER_MESSAGE + c("tool") + c("call_1") + c('{"temp": 21}') + REPLY_PRIMING_TOKENS
    )


def test_malformed_messages_do_not_raise(tok: Tokenizer) -> None:
    weird = [None, "hi", {"role": "user", "content": 42}, {"role": "user", "content": [None, 3]}]
    assert tok.count_messages("gpt-4o", weird) > 0  # type: ignore[list-item]
    assert tok.count_request("chat", {"messages": "nope", "tools": {"x": 1}}) == 0


# --- tools and requests ----------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_count_tools(tok: Tokenizer) -> None:
    fn = WEATHER_TOOL["function"]
    compact = (
        '{"name":"get_weather","description":"Get the current weather for a city.",'
        '"parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}'
    )
    assert tok.count_tools("gpt-4o", [WEATHER_TOOL]) == tok.count_text("gpt-4o", compact)
    flat = {"type": "function", **fn}  # Responses API shape
    assert tok.count_tools("gpt-4o", [flat]) == tok.count_tools("gpt-4o", [WEATHER_TOOL])
    assert tok.count_tools("gpt-4o", [WEATHER_TOOL, WEATHER_TOOL]) == 2 * tok.count_text("gpt-4o", compact)
    assert tok.count_tools("gpt-4o", [{"type": "web_search"}]) > 0


def test_count_request_chat(tok: Tokenizer) -> None:
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    body = {"model": "gpt-4", "messages": messages, "tools": [WEATHER_TOOL]}
    expected = tok.count_messages("gpt-4", messages) + tok.count_tools("gpt-4", [WEATHER_TOOL])
    assert tok.count_request("chat", body) == expected
    assert tok.count_request("chat", {"model": "gpt-4", "messages": messages}) == tok.count_messages(
        "gpt-4", messages
    )


def test_count_request_completions(tok: Tokenizer) -> None:
    c = lambda s: tok.count_text("davinci-002", s)  # noqa: E731
    body: dict[str, object] = {"model": "davinci-002", "prompt": "Once upon a time"}
    assert tok.count_request("completions", body) == c("Once upon a time")
    body["prompt"] = ["Once upon a time", "hello world"]
    assert tok.count_request("completions", body) == c("Once upon a time") + c("hello world")
    body["prompt"] = [1, 2, 3, 4]
    assert tok.count_request("completions", body) == 4
    body["prompt"] = [[1, 2], [3, 4, 5]]
    assert tok.count_request("completions", body) == 5
    assert tok.count_request("completions", {"model": "davinci-002"}) == 0


def test_count_request_embeddings(tok: Tokenizer) -> None:
    c = lambda s: tok.count_text("text-embedding-3-small", s)  # noqa: E731
    body: dict[str, object] = {"model": "text-embedding-3-small", "input": "hello world"}
    assert tok.count_request("embeddings", body) == c("hello world") == 2
    body["input"] = ["hello world", "tiktoken is great!"]
    assert tok.count_request("embeddings", body) == 8
    body["input"] = [5, 6, 7]
    assert tok.count_request("embeddings", body) == 3
    body["input"] = [[5, 6, 7], [8]]
    assert tok.count_request("embeddings", body) == 4


def test_count_request_responses(tok: Tokenizer) -> None:
    c = lambda s: tok.count_text("gpt-4.1", s)  # noqa: E731
    body: dict[str, object] = {"model": "gpt-4.1", "instructions": "Be terse.", "input": "Hi there"}
    expected = (
        2 * TOKENS_PER_MESSAGE
        + c("system")
        + c("Be terse.")
        + c("user")
        + c("Hi there")
        + REPLY_PRIMING_TOKENS
    )
    assert tok.count_request("responses", body) == expected
    body = {
        "model": "gpt-4.1",
        "input": [
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "Weather?"}, {"type": "input_image"}],
            },
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call_output", "call_id": "c1", "output": "21C"},
        ],
    }
    expected = (
        3 * TOKENS_PER_MESSAGE
        + c("user")
        + c("Weather?")
        + IMAGE_PART_TOKENS
        + c("get_weather")
        + c('{"city":"Paris"}')
        + c("21C")
        + REPLY_PRIMING_TOKENS
    )
    assert tok.count_request("responses", body) == expected
    with_tools = {**body, "tools": [{"type": "function", **WEATHER_TOOL["function"]}]}
    assert tok.count_request("responses", with_tools) == expected + tok.count_tools("gpt-4.1", [WEATHER_TOOL])


def test_count_request_unknown_operation(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        tok.count_request("images", {"model": "gpt-4o"})


def test_max_output_tokens(tok: Tokenizer) -> None:
    assert tok.max_output_tokens({}) is None
    assert tok.max_output_tokens({"max_tokens": 100}) == 100
    assert tok.max_output_tokens({"max_tokens": 100, "max_completion_tokens": 500}) == 500
    assert tok.max_output_tokens({"max_output_tokens": 42, "max_tokens": None}) == 42
    assert tok.max_output_tokens({"max_tokens": "100", "max_completion_tokens": 1.5}) is None
    assert tok.max_output_tokens({"max_tokens": True}) is None


# --- memo ---------------------------------------------------------------------------


def _long(i: int) -> str:
    return f"message {i}: " + "the quick brown fox jumps over the lazy dog " * 4


def test_memo_is_bounded_and_consistent() -> None:
    tok, plain = Tokenizer(cache_size=3), Tokenizer(cache_size=0)  # gpt-4: cl100k loads fastest
    texts = [_long(i) for i in range(10)]
    first = [tok.count_text("gpt-4", t) for t in texts]
    assert first == [plain.count_text("gpt-4", t) for t in texts]
    assert tok.memo_stats().entries == 3
    assert [tok.count_text("gpt-4", t) for t in texts[-3:]] == first[-3:]
    stats = tok.memo_stats()
    assert (stats.hits, stats.entries, stats.chars) == (3, 3, sum(map(len, texts[-3:])))
    assert plain.memo_stats().entries == 0


def test_memo_char_budget() -> None:
    tok = Tokenizer(cache_size=100, cache_max_chars=1000)
    for i in range(20):
        tok.count_text("gpt-4", _long(i))
    assert tok.memo_stats().chars <= 1000


def test_memo_is_keyed_by_encoding() -> None:
    tok = Tokenizer()
    text = "お誕生日おめでとう" * 10
    assert tok.count_text("gpt-4", text) != tok.count_text("gpt-4o", text)
    assert tok.memo_stats().entries == 2


def test_resent_conversation_only_tokenizes_new_message() -> None:
    tok = Tokenizer()
    conversation = [{"role": "user" if i % 2 else "assistant", "content": _long(i)} for i in range(50)]
    first = tok.count_messages("gpt-4", conversation)
    misses = tok.memo_stats().misses
    conversation.append({"role": "user", "content": _long(50)})
    second = tok.count_messages("gpt-4", conversation)
    assert tok.memo_stats().misses == misses + 1
    assert second == first + TOKENS_PER_MESSAGE + tok.count_text("gpt-4", "user") + tok.count_text(
        "gpt-4", _long(50)
    )


def test_invalid_cache_size() -> None:
    with pytest.raises(ValueError):
        Tokenizer(cache_size=-1)


# --- properties ---------------------------------------------------------------------

_texts = st.text(max_size=300) | st.text(alphabet="ab <|>\n\t.", min_size=60, max_size=300)


@settings(max_examples=150, deadline=None)
@given(text=_texts, model=st.sampled_from(["gpt-4", "gpt-4o"]))
def test_count_properties(tok: Tokenizer, plain_tok: Tokenizer, text: str, model: str) -> None:
    first = tok.count_text(model, text)
    assert first >= 0
    assert first == tok.count_text(model, text)  # memoised on the second call when long
    assert first == plain_tok.count_text(model, text)
    assert first == len(tok.encoding(tok.encoding_name_for(model)).encode_ordinary(text))
    assert (first == 0) == (text == "")


def test_a_loaded_encoding_keeps_no_python_copy_of_its_ranks_and_still_counts(
    tok: Tokenizer, reference: dict[str, tiktoken.Encoding]
) -> None:
    enc = tok.encoding("cl100k_base")
    assert enc._mergeable_ranks == {}  # the Rust core has its own copy
    assert reference["cl100k_base"]._mergeable_ranks  # positive control: tiktoken's own keeps it
    text = "hello world, héllo wörld 123"
    assert enc.encode(text) == reference["cl100k_base"].encode(text)
