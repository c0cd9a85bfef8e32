"""What a rate limit is, independent of where its state lives.

A ``LimitSet`` is every limit of one entity (an upstream, or one client key),
built once per config and reused by every request. The bucket backends
(memory, Redis) take a limit set plus the amounts of one request and answer
with a ``Verdict``; they never see config objects, so the same arithmetic runs
in Python and in Lua.

Kinds:
- ``bucket``: continuous-refill token bucket; ``capacity`` is what may go at
  once, ``rate`` what comes back per second (``capacity / 60 s``).
- ``slots``: concurrency; a slot is held until the answer's stream ends (or its
  lease expires, so a crashed replica cannot leak slots forever).
- ``day``: a budget per UTC calendar day (``daily_tokens``).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from gateway.config_model import AuthKeyConfig
from policies.ratelimit.config import RateLimitConfig

Kind = Literal["bucket", "slots", "day"]
Scope = Literal["upstream", "client"]
LIMIT_NAMES = ("rpm", "tpm", "concurrency", "daily_tokens")
COOLDOWN = "cooldown"  # the pseudo-limit of a paused upstream (reported under the ``rpm`` metric label)
NEVER = math.inf  # wait of a request that can never fit (larger than the bucket)
DAY_S = 86400.0
WINDOW_S = 60.0
# A lease is a small share of a bucket, and none is granted below half of it (``redis_scripts.LEASE_FLOOR``):
# larger fractions would let a few processes hold the whole limit.
MAX_LEASE = 0.1  # rpm/tpm are per minute: a full bucket refills in one minute


@dataclass(frozen=True, slots=True)
class Limit:
    name: str  # rpm | tpm | concurrency | daily_tokens: metric label and storage field
    kind: Kind
    capacity: float
    rate: float = 0.0  # refill per second (buckets only)
    tokens: bool = False  # the amount is the request's tokens (else 1 per request)


@dataclass(frozen=True, slots=True)
class LimitSet:
    """All limits of one entity; ``key`` is safe for Redis key names (never a secret)."""

    scope: Scope
    key: str
    label: str  # metric label: the upstream or tenant name (bounded by config)
    limits: tuple[Limit, ...]
    lease_s: float = 660.0  # how long a concurrency slot survives a replica that died holding it
    cooldown: bool = False  # upstreams can be paused by the provider's 429s
    lease: float = 0.0  # fraction of each bucket a process may lease from the shared state (0: never)
    counts_tokens: bool = field(init=False, compare=False)  # some limit needs the prompt counted
    names: tuple[str, ...] = field(init=False, compare=False)
    holds_slots: bool = field(init=False, compare=False)  # something to release when the answer ends
    lease_size: tuple[int, ...] = field(init=False, compare=False)  # per limit; () when never leased

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts_tokens", any(lim.tokens for lim in self.limits))
        object.__setattr__(self, "lease_size", lease_size(self.limits, self.lease))
        object.__setattr__(self, "holds_slots", any(lim.kind == "slots" for lim in self.limits))
        object.__setattr__(self, "names", tuple(lim.name for lim in self.limits))

    def amounts(self, tokens: int) -> tuple[int, ...]:
        return tuple(tokens if lim.tokens else 1 for lim in self.limits)

    def scaled(self, divisor: int) -> LimitSet:
        """The fallback share of one replica when the shared state is unreachable."""
        if divisor <= 1:
            return self
        limits = tuple(replace(lim, capacity=max(1.0, lim.capacity / divisor), rate=lim.rate / divisor)
                       for lim in self.limits)
        return replace(self, limits=limits)

    def find(self, name: str) -> Limit | None:
        for lim in self.limits:
            if lim.name == name:
                return lim
        return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A backend's answer for one request against one limit set.

    ``wait_s`` is real seconds until the request may fit (0: unknown, e.g. a
    concurrency slot; ``NEVER``: it is larger than the bucket). ``levels`` are
    what remains per limit after this call, in ``LimitSet.limits`` order.
    """

    ok: bool
    failed: str = ""  # limit name, or ``cooldown``
    wait_s: float = 0.0
    levels: tuple[float, ...] = ()
    local: bool = False  # decided by the local fallback (Redis unreachable)
    leased: bool = False  # the shared state granted a lease with it (``policies.ratelimit.lease``)


def lease_size(limits: tuple[Limit, ...], fraction: float) -> tuple[int, ...]:
    """What one lease takes per limit: ``fraction`` of each bucket, whole units; () when the set is never
    leased (no fraction, a concurrency or daily limit, which every request must check in the shared state,
    or a bucket too small to give a whole unit: small limits stay exact per request)."""
    if fraction <= 0 or any(lim.kind != "bucket" for lim in limits):
        return ()
    size = tuple(int(fraction * lim.capacity) for lim in limits)
    return size if size and min(size) >= 1 else ()


def upstream_limits(name: str, cfg: RateLimitConfig, lease_s: float) -> LimitSet | None:
    """The upstream's buckets at ``headroom`` x the provider quota; None when it has no limit."""
    limits: list[Limit] = []
    window = WINDOW_S
    if cfg.rpm:
        cap = max(1.0, cfg.rpm * cfg.headroom)
        limits.append(Limit("rpm", "bucket", cap, cap / window))
    if cfg.tpm:
        cap = max(1.0, cfg.tpm * cfg.headroom)
        limits.append(Limit("tpm", "bucket", cap, cap / window, tokens=True))
    if cfg.max_concurrency:
        limits.append(Limit("concurrency", "slots", float(cfg.max_concurrency)))
    if not limits:
        return None
    return LimitSet("upstream", upstream_key(name), name, tuple(limits), lease_s=lease_s, cooldown=True,
                    lease=cfg.lease)


def upstream_key(name: str) -> str:
    """The storage key of an upstream's limits (its buckets and its pause)."""
    return f"u:{name}"


def client_limits(key: AuthKeyConfig, key_hash: str, lease_s: float) -> LimitSet | None:
    """A client key's own limits (exact, no headroom); None when it has none."""
    limits: list[Limit] = []
    if key.rpm:
        limits.append(Limit("rpm", "bucket", float(key.rpm), key.rpm / WINDOW_S))
    if key.tpm:
        limits.append(Limit("tpm", "bucket", float(key.tpm), key.tpm / WINDOW_S, tokens=True))
    if key.max_concurrency:
        limits.append(Limit("concurrency", "slots", float(key.max_concurrency)))
    if key.daily_tokens:
        limits.append(Limit("daily_tokens", "day", float(key.daily_tokens), tokens=True))
    if not limits:
        return None
    return LimitSet("client", f"c:{key.tenant}:{key_id(key_hash)}", key.tenant, tuple(limits),
                    lease_s=lease_s, lease=key.lease)


def key_id(key_hash: str) -> str:
    """A short id for a client key, derived from its digest: safe in Redis key names and logs."""
    return hashlib.sha256(key_hash.encode()).hexdigest()[:16]


def check_rate_limit(path: str, cfg: RateLimitConfig) -> list[str]:
    """Problems with one ``rate_limit`` block, as ``dotted.path: what is wrong``."""
    problems = []
    if not 0 < cfg.headroom <= 1:
        problems.append(f"{path}.headroom: must be in (0, 1]")
    if not 0 <= cfg.lease <= MAX_LEASE:
        problems.append(f"{path}.lease: must be in [0, {MAX_LEASE:g}] (a fraction of each limit; 0: off)")
    if cfg.max_queue < 0 or cfg.max_queue_wait_s < 0:
        problems.append(f"{path}.max_queue/max_queue_wait_s: must be >= 0")
    for name in ("rpm", "tpm", "max_concurrency"):
        value = getattr(cfg, name)
        if value is not None and value < 0:
            problems.append(f"{path}.{name}: must be >= 0")
    return problems


def check_key_limits(path: str, keys: Iterable[AuthKeyConfig]) -> list[str]:
    problems = []
    for i, key in enumerate(keys):
        if not 0 <= key.lease <= MAX_LEASE:
            problems.append(f"{path}[{i}].lease: must be in [0, {MAX_LEASE:g}] (a fraction of each limit)")
        for name in ("rpm", "tpm", "max_concurrency", "daily_tokens"):
            value = getattr(key, name)
            if value is not None and value < 0:
                problems.append(f"{path}[{i}].{name}: must be >= 0")
    return problems
