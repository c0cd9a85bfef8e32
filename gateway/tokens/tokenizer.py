"""Fast, offline, prompt-side token counting for OpenAI-style request bodies.

The gateway needs token counts on the hot path (token-based rate limits, budget
checks, metrics) before a request is forwarded, without calling the upstream.
Counts follow OpenAI's published chat formula and tiktoken's encodings, loaded
from files shipped with the gateway (:mod:`gateway.tokens.bpe`) so counting works
without network access.

Agents resend the same long conversation every turn, so per-string counts are
memoised in a bounded LRU keyed by ``(encoding, text)``: a 50k-token conversation
re-sent with one new message only tokenizes the new message.

Counts are estimates of what the provider will bill; they are exact for plain text
with OpenAI models and approximate for images, tool schemas and non-OpenAI models.
Bodies come from clients, so malformed shapes are skipped (counted as 0) rather than
raising: the upstream is the one that validates requests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.memory import trim_heap
from gateway.tokens.bpe import BPE_FILES, load_encoding
from gateway.tokens.request import (
    IMAGE_PART_TOKENS,
    count_messages,
    count_responses,
    count_token_input,
    count_tools,
)

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "CL100K_BASE",
    "DEFAULT_ENCODING",
    "IMAGE_PART_TOKENS",
    "MODEL_PREFIX_ENCODINGS",
    "O200K_BASE",
    "OPERATIONS",
    "MemoStats",
    "Tokenizer",
    "normalise_model",
]

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"

# Unknown models get o200k_base: it is the encoding of every current OpenAI model, so
# it is the best guess for OpenAI models newer than this table, and for non-OpenAI
# models (whose tokenizers we do not ship) its ~200k vocabulary lands closer to
# modern 128k-256k vocabularies than cl100k_base does.
DEFAULT_ENCODING = O200K_BASE

# Model-name prefix -> encoding, longest prefix first so "gpt-4o" wins over "gpt-4".
# Matches tiktoken.model; gpt-oss uses o200k_harmony there, which has o200k_base's
# ranks and regex (only extra special tokens), so plain-text counts are identical.
MODEL_PREFIX_ENCODINGS: tuple[tuple[str, str], ...] = tuple(
    sorted(
        {
            "gpt-4o": O200K_BASE,
            "chatgpt-4o": O200K_BASE,
            "gpt-4.1": O200K_BASE,
            "gpt-4.5": O200K_BASE,
            "gpt-5": O200K_BASE,
            "gpt-oss": O200K_BASE,
            "o1": O200K_BASE,
            "o3": O200K_BASE,
            "o4": O200K_BASE,
            "gpt-4": CL100K_BASE,
            "gpt-3.5": CL100K_BASE,
            "gpt-35": CL100K_BASE,  # Azure deployment spelling
            "text-embedding-": CL100K_BASE,
            "davinci-002": CL100K_BASE,
            "babbage-002": CL100K_BASE,
        }.items(),
        key=lambda item: -len(item[0]),
    )
)

OPERATIONS = frozenset({"chat", "completions", "embeddings", "responses"})

# Strings this short tokenize in about a microsecond, less than an LRU round trip.
MEMO_MIN_CHARS = 64
DEFAULT_MEMO_MAX_CHARS = 64 * 1024 * 1024

_OUTPUT_LIMIT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class MemoStats:
    """A snapshot of the count memo, for metrics and tests."""

    entries: int
    chars: int
    hits: int
    misses: int
    max_entries: int


@dataclass(slots=True)
class _CountMemo:
    """A bounded LRU of ``(encoding, text) -> token count``.

    Bounded by entries and by total characters held, because the keys keep whole
    message texts alive. Nothing awaits inside, so it is safe under asyncio without
    locks; under threads the worst case is a lost update or a skewed size estimate,
    never a wrong count.
    """

    max_entries: int
    max_chars: int
    entries: OrderedDict[tuple[str, str], int] = field(default_factory=OrderedDict)
    chars: int = 0
    hits: int = 0
    misses: int = 0

    def get(self, key: tuple[str, str]) -> int | None:
        count = self.entries.get(key)
        if count is None:
            self.misses += 1
            return None
        self.hits += 1
        try:
            self.entries.move_to_end(key)
        except KeyError:  # evicted by another thread in between; the count is still right
            pass
        return count

    def put(self, key: tuple[str, str], count: int) -> None:
        size = len(key[1])
        if self.max_entries <= 0 or size > self.max_chars or key in self.entries:
            return
        self.entries[key] = count
        self.chars += size
        while self.entries and (len(self.entries) > self.max_entries or self.chars > self.max_chars):
            (_, evicted), _ = self.entries.popitem(last=False)
            self.chars -= len(evicted)
        if not self.entries:  # re-anchor the char total if a threaded race ever skewed it
            self.chars = 0

    def stats(self) -> MemoStats:
        return MemoStats(len(self.entries), self.chars, self.hits, self.misses, self.max_entries)


@dataclass(frozen=True, slots=True)
class _BoundCounter:
    """Counts strings with one encoding; resolved once per request, not per string."""

    encoding_name: str
    encode: Callable[[str], list[int]]
    memo: _CountMemo

    def __call__(self, text: str) -> int:
        if len(text) <= MEMO_MIN_CHARS:
            return len(self.encode(text))
        key = (self.encoding_name, text)
        count = self.memo.get(key)
        if count is None:
            count = len(self.encode(text))
            self.memo.put(key, count)
        return count


def normalise_model(model: str) -> str:
    """Reduce a routed model name to the base model it names.

    ``"openai/gpt-4o"`` and ``"azure/eu/gpt-4o"`` -> ``"gpt-4o"`` (provider routing
    prefixes), ``"ft:gpt-4o-mini-2024-07-18:org::id"`` -> ``"gpt-4o-mini-2024-07-18"``.
    """
    name = model.strip().lower().rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    return name


def _validated_overrides(model_encodings: Mapping[str, str] | None) -> dict[str, str]:
    """Check config overrides up front so a typo fails at start-up, not per request."""
    overrides: dict[str, str] = {}
    for model, encoding in (model_encodings or {}).items():
        if encoding not in BPE_FILES:
            known = ", ".join(sorted(BPE_FILES))
            raise ValueError(f"model_encodings[{model!r}] = {encoding!r}: unknown encoding (use {known})")
        overrides[model.strip().lower()] = encoding
    return overrides


class Tokenizer:
    """Counts prompt tokens for models and request bodies.

    Created once by the app and passed to whoever needs it; holds the lazily loaded
    encodings and the count memo. Encodings load on first use (the gateway does that in its
    work pool, off the event loop: ``gateway.tokens.prompt.count_prompt``); :meth:`preload` loads
    them now.
    """

    def __init__(
        self,
        model_encodings: Mapping[str, str] | None = None,
        cache_size: int = 4096,
        *,
        cache_max_chars: int = DEFAULT_MEMO_MAX_CHARS,
    ) -> None:
        if cache_size < 0 or cache_max_chars < 0:
            raise ValueError("cache_size and cache_max_chars must be >= 0 (0 disables the memo)")
        self._overrides = _validated_overrides(model_encodings)
        self._memo = _CountMemo(max_entries=cache_size, max_chars=cache_max_chars)
        self._encodings: dict[str, tiktoken.Encoding] = {}

    def preload(self, encodings: Iterable[str] | None = None) -> None:
        """Load encodings now (default: all shipped ones) instead of on first use."""
        for name in BPE_FILES if encodings is None else encodings:
            self.encoding(name)

    def encoding(self, name: str) -> tiktoken.Encoding:
        """The tiktoken encoding ``name``, loaded from the shipped file on first use."""
        enc = self._encodings.get(name)
        if enc is None:
            enc = load_encoding(name)
            # tiktoken keeps a Python dict of the ~200k ranks only to pickle the encoding (its Rust core
            # holds its own copy): ~21 MB per encoding. Encodings are never pickled here.
            enc._mergeable_ranks = {}
            self._encodings[name] = enc
            trim_heap()  # the file's text and the parse's temporaries back to the OS
        return enc

    def is_loaded(self, encoding: str) -> bool:
        """Whether ``encoding`` is loaded (else the first count pays ~0.2 s loading it)."""
        return encoding in self._encodings

    def encoding_name_for(self, model: str) -> str:
        """Encoding for ``model``: config override, then prefix table, then o200k_base."""
        if self._overrides:
            key = model.strip().lower()
            override = self._overrides.get(key) or self._overrides.get(normalise_model(key))
            if override is not None:
                return override
        name = normalise_model(model)
        for prefix, encoding in MODEL_PREFIX_ENCODINGS:
            if name.startswith(prefix):
                return encoding
        return DEFAULT_ENCODING

    def memo_stats(self) -> MemoStats:
        """Hit/miss counters and size of the per-string count memo."""
        return self._memo.stats()

    def _counter(self, model: str) -> _BoundCounter:
        name = self.encoding_name_for(model)
        return _BoundCounter(name, self.encoding(name).encode_ordinary, self._memo)

    def count_text(self, model: str, text: str) -> int:
        """Tokens in ``text``; special-token strings like ``<|endoftext|>`` count as plain text."""
        return self._counter(model)(text)

    def count_messages(self, model: str, messages: Sequence[Mapping[str, Any]]) -> int:
        """Prompt tokens of chat ``messages`` by OpenAI's formula (0 for no messages)."""
        return count_messages(self._counter(model), messages)

    def count_tools(self, model: str, tools: Sequence[Mapping[str, Any]]) -> int:
        """Approximate tokens of tool definitions (compact JSON of name/description/parameters)."""
        return count_tools(self._counter(model), tools)

    def count_request(self, operation: str, body: Mapping[str, Any]) -> int:
        """Prompt-side tokens of a request ``body`` for ``operation`` (see :data:`OPERATIONS`)."""
        model = body.get("model")
        count = self._counter(model if isinstance(model, str) else "")
        if operation == "chat":
            return (
                count_messages(count, body.get("messages"))
                + count_tools(count, body.get("tools"))
                + count_tools(count, body.get("functions"))
            )
        if operation == "completions":
            suffix = body.get("suffix")
            return count_token_input(count, body.get("prompt")) + (
                count(suffix) if isinstance(suffix, str) else 0
            )
        if operation == "embeddings":
            return count_token_input(count, body.get("input"))
        if operation == "responses":
            return count_responses(count, body)
        raise ValueError(f"unknown operation {operation!r}; expected one of {sorted(OPERATIONS)}")

    def max_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        """Largest integer output limit in ``body`` (chat, completions or responses spelling)."""
        limits = [v for key in _OUTPUT_LIMIT_KEYS if type(v := body.get(key)) is int]
        return max(limits) if limits else None
