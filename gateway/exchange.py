"""The per-request state that flows through the policy onion.

An ``Exchange`` is created once per proxied request by the handler. The request
JSON is parsed once and shared (routing, cache key, tokenizer, compression and
rate limiting all read ``ex.body``); the original bytes are forwarded unless a
policy changed the body (``ex.set_body``), so the hot path never re-serialises.
The same object is the request's record: policies fill in timing, usage and
outcome fields, and sinks (metrics, ledger, log line) read them at the end.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from multidict import CIMultiDictProxy

Source = Literal["upstream", "cache", "local"]


@dataclass(slots=True)
class Usage:
    """Token usage of one answer; ``estimated`` when counted by us, not reported."""

    prompt: int = 0
    completion: int = 0
    cached_prompt: int = 0
    reasoning: int = 0
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.prompt + self.completion


@dataclass(slots=True)
class Attempt:
    """One call to an upstream, for metrics, traces and the ledger."""

    upstream: str
    model: str
    started: float
    ended: float = 0.0
    outcome: str = "pending"  # ok | http_<status> | <UpstreamFailure.kind> | cancelled
    status: int = 0


@dataclass(slots=True, kw_only=True)
class Exchange:
    request_id: str
    method: str
    path: str
    operation: str  # chat | completions | embeddings | responses | tool | passthrough
    headers: CIMultiDictProxy[str]
    raw_body: bytes
    body: dict[str, Any] | None
    received_at: float  # loop.time() at arrival
    deadline: float  # loop.time() by which everything (queue, retries) must end
    route_name: str = ""
    model: str = ""  # as the client asked
    upstream: str = ""  # current target (retry/fallback may change it)
    upstream_model: str = ""  # model name sent upstream after rewrites
    tenant: str = "default"  # bounded label: from auth config, else "default"
    namespace: str = "default"  # cache isolation key: tenant, or a hash of the client key
    client_key_hash: str = ""
    stream: bool = False
    query_string: str = ""
    upstream_path: str = ""  # path below the upstream's base_url, e.g. "/chat/completions"
    modified: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)  # per-policy scratch, keyed by policy name
    response_headers: dict[str, str] = field(default_factory=dict)  # added to the client response
    # --- the record, filled in as the request goes ---
    status: int = 0
    source: Source = "upstream"
    cache_result: str = "none"  # none | hit | semantic-hit | miss | bypass | coalesced
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    ended_at: float = 0.0
    usage: Usage | None = None
    finish_reasons: list[str] = field(default_factory=list)
    response_model: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    waited_s: float = 0.0  # deliberate waits (rate-limit queue, retry backoff): not gateway overhead
    upstream_s: float = 0.0  # time spent waiting on upstreams
    error_kind: str = ""
    stream_outcome: str = ""  # done | error_event | client_gone | ""

    def set_body(self, body: dict[str, Any]) -> None:
        """Replace the request body; the upstream then gets a re-serialised copy."""
        self.body = body
        self.modified = True

    def body_bytes(self) -> bytes:
        if not self.modified:
            return self.raw_body
        return orjson.dumps(self.body)


@dataclass(slots=True)
class UpstreamResponse:
    """A response on its way to the client; ``body`` is never pre-read by the core.

    ``headers`` are already free of hop-by-hop fields. ``body`` must be fully
    consumed or ``aclose``d; closing it releases the upstream connection.
    """

    status: int
    headers: Mapping[str, str]
    body: AsyncIterator[bytes]
    source: Source = "upstream"
    upstream: str = ""

    @property
    def is_sse(self) -> bool:
        return self.headers.get("content-type", "").startswith("text/event-stream")


async def single_chunk(data: bytes) -> AsyncIterator[bytes]:
    """A body made of one buffer (cache hits, local answers)."""
    yield data
