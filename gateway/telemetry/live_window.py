"""Building blocks of the live rolling windows: a sparse log histogram and a one-second bucket.

The live view needs percentiles over the last 15 minutes without keeping every
sample (memory must stay bounded however busy the gateway is) and without
sorting on the request path. A log-scaled histogram gives both: recording is
one ``math.log`` and one dict increment; a percentile is read from at most a
few hundred bins. Bins are 5 % wide, so any percentile is within ±2.5 % of the
true sample value, which is finer than anyone reads a latency chart.

Buckets and window totals share one shape (``Second``) so that sealing a
second into the window and expiring it out of the window are the same merge
with opposite signs: the window never has to be recomputed from scratch.
"""
from __future__ import annotations

import math

STEP = 1.05  # relative bin width
MIN_S = 1e-4  # values below 0.1 ms share the first bin
_INV_LOG_STEP = 1.0 / math.log(STEP)
MAX_BIN = int(math.log(3600.0 / MIN_S) * _INV_LOG_STEP)  # an hour: anything longer is clamped

# Global counters of a Second, by index (a list is faster than a dict on the hot path).
REQ, OK, CLIENT_ERR, ERR, PROMPT, COMPLETION, CACHED, REASONING, COST = range(9)
RETRIED, EXTRA_ATTEMPTS, FALLBACKS, TIMEOUTS, WAITED, WAIT_S, SAVED_CACHE, SAVED_COMP, COMP_REQ = range(9, 18)
HEDGED = 18  # requests whose first token was hedged on a second target
N_GLOBAL = 19
# Per model and per tenant counters.
M_REQ, M_ERR, M_PROMPT, M_COMPLETION, M_CACHED, M_COST = range(6)
N_GROUP = 6


def bin_of(value_s: float) -> int:
    if value_s <= MIN_S:
        return 0
    return min(int(math.log(value_s / MIN_S) * _INV_LOG_STEP), MAX_BIN)


def bin_value(index: int) -> float:
    """The representative (geometric middle) value of a bin, in seconds."""
    return MIN_S * STEP ** (index + 0.5) if index > 0 else MIN_S


class Hist:
    """A sparse log-scaled histogram of durations in seconds."""

    __slots__ = ("bins", "n")

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.n = 0

    def add(self, value_s: float) -> None:
        i = bin_of(value_s)
        bins = self.bins
        bins[i] = bins.get(i, 0) + 1
        self.n += 1

    def merge(self, other: Hist, sign: int = 1) -> None:
        bins = self.bins
        for i, count in other.bins.items():
            left = bins.get(i, 0) + sign * count
            if left:
                bins[i] = left
            else:
                bins.pop(i, None)
        self.n += sign * other.n

    def quantile(self, q: float) -> float | None:
        """Nearest-rank percentile (``q`` in 0..1), or None when empty."""
        if self.n <= 0:
            return None
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for i in sorted(self.bins):
            seen += self.bins[i]
            if seen >= rank:
                return bin_value(i)
        return bin_value(max(self.bins))


class Second:
    """Everything recorded in one second (or, as window totals, in many seconds).

    ``hists`` keys: ``"lat"``, ``"ttft"``, ``"itl"``, ``"wait"`` (all requests) and
    ``("ttft", model)``, ``("itl", model)``, ``("lat", model)``. Model and tenant
    keys come from bounded sets, so the number of keys is bounded too.
    """

    __slots__ = ("cache", "g", "hists", "models", "peak_inflight", "point", "stamp", "tenants")

    def __init__(self, stamp: int = -1) -> None:
        self.stamp = stamp
        self.g: list[float] = [0] * N_GLOBAL
        self.models: dict[str, list[float]] = {}
        self.tenants: dict[str, list[float]] = {}
        self.cache: dict[str, int] = {}
        self.hists: dict[object, Hist] = {}
        self.peak_inflight = 0
        self.point: dict[str, object] | None = None  # the chart row, computed once when the second is over

    def hist(self, key: object) -> Hist:
        h = self.hists.get(key)
        if h is None:
            h = self.hists[key] = Hist()
        return h

    def observe(self, key: str, model_key: tuple[str, str] | None, value_s: float) -> None:
        """Count one duration in the global histogram ``key`` and, if given, the per-model one.

        The hot path's one histogram entry point: the bin is computed once for both.
        """
        i = 0 if value_s <= MIN_S else min(int(math.log(value_s / MIN_S) * _INV_LOG_STEP), MAX_BIN)
        hists = self.hists
        h = hists.get(key)
        if h is None:
            h = hists[key] = Hist()
        h.bins[i] = h.bins.get(i, 0) + 1
        h.n += 1
        if model_key is not None:
            h = hists.get(model_key)
            if h is None:
                h = hists[model_key] = Hist()
            h.bins[i] = h.bins.get(i, 0) + 1
            h.n += 1

    def merge(self, other: Second, sign: int = 1) -> None:
        """Add (sign=1) or remove (sign=-1) another second's figures; empty groups are dropped."""
        g = self.g
        for i, v in enumerate(other.g):
            g[i] += sign * v
        _merge_groups(self.models, other.models, sign)
        _merge_groups(self.tenants, other.tenants, sign)
        cache = self.cache
        for kind, count in other.cache.items():
            left = cache.get(kind, 0) + sign * count
            if left:
                cache[kind] = left
            else:
                cache.pop(kind, None)
        for key, h in other.hists.items():
            mine = self.hist(key)
            mine.merge(h, sign)
            if mine.n <= 0:
                del self.hists[key]

    def copy(self) -> Second:
        out = Second(self.stamp)
        out.merge(self)
        out.peak_inflight = self.peak_inflight
        return out


def _merge_groups(mine: dict[str, list[float]], other: dict[str, list[float]], sign: int) -> None:
    for name, values in other.items():
        row = mine.get(name)
        if row is None:
            row = mine[name] = [0] * N_GROUP
        for i, v in enumerate(values):
            row[i] += sign * v
        if row[M_REQ] <= 0:
            del mine[name]
