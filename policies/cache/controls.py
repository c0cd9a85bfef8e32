"""What the client may ask of the cache, and what it may not.

``Cache-Control: no-cache`` skips the lookup and refreshes the entry;
``Cache-Control: no-store`` neither reads nor writes; ``x-gateway-cache``
takes ``bypass`` (neither), ``refresh`` (write only) or ``read-only`` (read
only); ``x-gateway-cache-ttl: <s>`` can only shorten the configured TTL, and on
reads it also refuses entries older than that. A client can never pick a
namespace, lengthen a TTL or lower a similarity threshold: none of those is read
from the request.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from policies.cache.config import CacheMode


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheControls:
    read: bool = True
    write: bool = True
    max_age_s: float | None = None  # shorter TTL asked by the client

    @property
    def bypass(self) -> bool:
        return not self.read and not self.write

    def ttl(self, configured: float) -> float:
        return configured if self.max_age_s is None else min(configured, self.max_age_s)


DEFAULT = CacheControls()


def parse_controls(headers: Mapping[str, str]) -> CacheControls:
    cc = headers.get("cache-control")
    gw = headers.get("x-gateway-cache")
    ttl = headers.get("x-gateway-cache-ttl")
    if cc is None and gw is None and ttl is None:
        return DEFAULT
    read = write = True
    if cc:
        directives = {d.strip().lower().split("=", 1)[0] for d in cc.split(",")}
        if "no-store" in directives:
            read = write = False
        elif "no-cache" in directives:
            read = False
    if gw:
        value = gw.strip().lower()
        if value == "bypass":
            read = write = False
        elif value == "refresh":
            read = False
        elif value == "read-only":
            write = False
    return CacheControls(read=read, write=write, max_age_s=_ttl(ttl))


def _ttl(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def mode_allows(mode: CacheMode, controls: CacheControls) -> tuple[bool, bool]:
    """(may read, may write) for a configured mode and the client's controls."""
    read = mode in ("read_write", "read_only") and controls.read
    write = mode in ("read_write", "write_only") and controls.write
    return read, write
