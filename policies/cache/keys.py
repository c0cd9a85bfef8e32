"""Cache keys: SHA-256 over a canonical form of everything that can change the answer.

The canonical form is the parsed request body with sorted keys and no whitespace,
minus the fields that only change the *delivery* (``stream``, ``stream_options``)
or identify the caller (``user`` and request ids). Everything else stays in: an
allow-list would silently drop a new provider parameter that does change the
answer, a deny-list at worst costs a miss. The tenant namespace, the upstream and
model after routing and the cache-relevant config version are folded in too, and
the namespace is also a hard prefix of the key (``CacheKey.namespace``), so two
tenants can never meet in a store even if SHA-256 collided.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

# Format of stored answers and keys: bump to orphan every entry after a change.
KEY_FORMAT = 1

# Delivery or caller-identity fields: they never change the answer.
IGNORED_FIELDS = frozenset({
    "stream", "stream_options", "user", "safety_identifier", "prompt_cache_key", "request_id", "metadata",
    "store",
})
_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
# Forwarded request headers that change the provider's answer: part of every key (extended by
# ``cache.key_headers``). The forwarded query string (Azure's ``api-version``...) is part of it too.
DEFAULT_KEY_HEADERS = ("openai-beta", "openai-organization", "openai-project", "anthropic-version",
                       "anthropic-beta")


class CacheKey(NamedTuple):
    """``namespace`` is the hard tenant prefix; ``digest`` covers everything (namespace included).

    A named tuple, not a frozen dataclass: the stores' dicts hash and compare it in C (a dataclass's
    ``__hash__`` and ``__eq__`` are Python functions: a call per dict operation, three per stored miss) and
    it is built without ``object.__setattr__`` per field (issue 21)."""

    namespace: str
    digest: str

    def __str__(self) -> str:
        return f"{self.namespace}:{self.digest}"


def canonical(value: Any) -> bytes:
    """Sorted keys, no whitespace: the same JSON value always gives the same bytes."""
    return orjson.dumps(value, option=_OPTS)


def answer_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body without delivery and identity fields, and without ``model`` (routing decides it)."""
    return {k: v for k, v in body.items() if k not in IGNORED_FIELDS and k != "model"}


def make_key(*, namespace: str, upstream: str, model: str, operation: str, config_version: str,
             fields: Any) -> CacheKey:
    """Hash the canonical form of one request; ``fields`` is what :func:`answer_fields` kept."""
    head = canonical([KEY_FORMAT, namespace, upstream, model, operation, config_version])
    h = hashlib.sha256(head)
    h.update(b"\x00")
    h.update(canonical(fields))
    return CacheKey(namespace, h.hexdigest())


def is_deterministic(body: Mapping[str, Any]) -> bool:
    """``temperature: 0`` or an integer ``seed``: the answer is meant to repeat."""
    temp = body.get("temperature")
    if isinstance(temp, (int, float)) and not isinstance(temp, bool) and temp == 0:
        return True
    seed = body.get("seed")
    return isinstance(seed, int) and not isinstance(seed, bool)


def request_context(query_string: str, headers: Mapping[str, str], names: tuple[str, ...]) -> list[Any]:
    """What besides the body changes the answer: the forwarded query and the answer-changing headers
    (an empty list when there is none, so such requests keep their keys)."""
    present = [[name, headers[name]] for name in names if name in headers]
    return [query_string, present] if query_string or present else []


def config_version(*parts: Any) -> str:
    """A short digest of the config that shapes answers (upstream URL, compression, budgets)."""
    return hashlib.sha256(orjson.dumps([KEY_FORMAT, *[repr(p) for p in parts]])).hexdigest()[:16]


def namespace_token(namespace: str) -> str:
    """The namespace as it may appear in a Redis key: tenant names stay readable, the rest is hashed."""
    if namespace.startswith("t:") and namespace[2:].replace("-", "").replace("_", "").isalnum() \
            and len(namespace) <= 66:
        return namespace
    return "h:" + hashlib.sha256(namespace.encode()).hexdigest()[:32]
