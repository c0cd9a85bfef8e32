"""A client key's own limits (``auth.keys[].rpm``, ``max_concurrency``) applied to its tool calls.

Like the LLM client limit: refused at once (HTTP 429, ``Retry-After``, a JSON-RPC error in the
body, which the MCP SDKs hand to the caller), never queued; the client is the one that must slow
down. Tool calls have their own buckets per key (they never spend the key's LLM quota). A key with
``enforce: false`` is counted ``shadow_rejected`` and let through. A result-cache hit spends nothing.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth import Identity
from policies.ratelimit.buckets import MemoryBuckets
from policies.ratelimit.model import WINDOW_S, Limit, LimitSet, key_id

LEASE_S = 3600.0  # a concurrency place is always given back; the lease only bounds a bug


@dataclass(frozen=True, slots=True)
class TenantVerdict:
    decision: str  # allowed | rejected | shadow_rejected | unlimited
    limit: str = ""  # rpm | concurrency, when over
    retry_after_s: int = 0
    release: Callable[[], None] = lambda: None


class TenantLimits:
    """Per-key tool-call buckets (bounded by the configured keys)."""

    def __init__(self, buckets: MemoryBuckets) -> None:
        self.buckets = buckets
        self._sets: dict[str, LimitSet | None] = {}
        self._serial = itertools.count()

    def admit(self, identity: Identity) -> TenantVerdict:
        ls = self._limits(identity)
        if ls is None:
            return TenantVerdict("unlimited")
        member = f"m{next(self._serial)}"
        verdict = self.buckets.acquire_now(ls, (1,) * len(ls.limits), member)
        if verdict.ok:
            return TenantVerdict("allowed", release=lambda: self._release(ls, member))
        assert identity.key is not None
        wait = verdict.wait_s if verdict.wait_s != math.inf else WINDOW_S
        decision = "rejected" if identity.key.enforce else "shadow_rejected"
        return TenantVerdict(decision, verdict.failed, max(1, math.ceil(wait)))

    def _release(self, ls: LimitSet, member: str) -> None:
        self.buckets.settle_now(ls, (0,) * len(ls.limits), member)

    def _limits(self, identity: Identity) -> LimitSet | None:
        key = identity.key
        if key is None:
            return None
        if identity.key_hash not in self._sets:
            limits: list[Limit] = []
            if key.rpm:
                limits.append(Limit("rpm", "bucket", float(key.rpm), key.rpm / WINDOW_S))
            if key.max_concurrency:
                limits.append(Limit("concurrency", "slots", float(key.max_concurrency)))
            ident = f"mcp:c:{key.tenant}:{key_id(identity.key_hash)}"
            self._sets[identity.key_hash] = (
                LimitSet("client", ident, key.tenant, tuple(limits), lease_s=LEASE_S) if limits else None
            )
        return self._sets[identity.key_hash]
