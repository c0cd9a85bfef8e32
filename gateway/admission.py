"""Per-client admission: one client cannot take the global slots (issue 15).

``server.max_inflight`` sheds load for the whole process; before it, each client (the digest of its
credentials that ``gateway.auth`` took, else its address) may have at most ``server.client_max_inflight``
requests in flight and at most ``server.client_max_reading`` request bodies still being read. Over
either: 429 with Retry-After at once, before its body is read, so a tenant trickling slow bodies holds at
most ``client_max_reading`` slots and the other tenants keep theirs. Counts live in this process (per
worker), in dicts that drop a client as soon as it has nothing in flight.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from gateway.auth import Identity
from gateway.errors import LocalReply


def client_key(identity: Identity, request: web.Request) -> str:
    """A bounded, non-secret key for the client: the digest ``auth`` took of its credential (not a second
    SHA-256 of it per request: issue 21), else its address."""
    return "k:" + identity.key_hash[:32] if identity.key_hash else f"ip:{request.remote or ''}"


def too_many(what: str, limit: int, setting: str) -> LocalReply:
    return LocalReply(429, f"Too many {what} from this client (at most {limit}, {setting}); retry after the "
                      "delay in Retry-After.", type="requests", code="client_overloaded",
                      headers={"retry-after": "1", "x-should-retry": "true"})


@dataclass(slots=True)
class Admission:
    inflight: dict[str, int] = field(default_factory=dict)
    reading: dict[str, int] = field(default_factory=dict)

    def enter(self, key: str, max_inflight: int, max_reading: int) -> None:
        """Take an in-flight and a reading slot for ``key`` (raises the 429 when over a cap)."""
        if self.inflight.get(key, 0) >= max_inflight:
            raise too_many("requests in flight", max_inflight, "server.client_max_inflight")
        if self.reading.get(key, 0) >= max_reading:
            raise too_many("request bodies being sent", max_reading, "server.client_max_reading")
        self.inflight[key] = self.inflight.get(key, 0) + 1
        self.reading[key] = self.reading.get(key, 0) + 1

    def done_reading(self, key: str) -> None:
        _decrement(self.reading, key)

    def leave(self, key: str, still_reading: bool) -> None:
        if still_reading:
            _decrement(self.reading, key)
        _decrement(self.inflight, key)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
