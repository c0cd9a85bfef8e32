"""Client cache controls: what each header does, and that nothing can lengthen a TTL."""
from __future__ import annotations

import pytest

from policies.cache.controls import CacheControls, mode_allows, parse_controls


@pytest.mark.parametrize("headers,read,write", [
    ({}, True, True),
    ({"cache-control": "no-cache"}, False, True),
    ({"cache-control": "max-age=0, no-store"}, False, False),
    ({"x-gateway-cache": "bypass"}, False, False),
    ({"x-gateway-cache": "refresh"}, False, True),
    ({"x-gateway-cache": "READ-ONLY"}, True, False),
    ({"x-gateway-cache": "whatever"}, True, True),
])
def test_controls(headers: dict[str, str], read: bool, write: bool) -> None:
    """Each documented control maps to its read/write behaviour; unknown values change nothing."""
    c = parse_controls(headers)
    assert (c.read, c.write) == (read, write)


@pytest.mark.parametrize(
    "raw,expected", [("10", 10.0), ("1e9", 100.0), ("-1", 100.0), ("nan", 100.0), ("x", 100.0)]
)
def test_ttl_only_shortens(raw: str, expected: float) -> None:
    """x-gateway-cache-ttl can only shorten the configured TTL; garbage is ignored."""
    assert parse_controls({"x-gateway-cache-ttl": raw}).ttl(100.0) == expected


def test_modes() -> None:
    """Configured modes combine with the client's controls."""
    assert mode_allows("read_only", CacheControls()) == (True, False)
    assert mode_allows("write_only", CacheControls()) == (False, True)
    assert mode_allows("off", CacheControls()) == (False, False)
    assert mode_allows("read_write", CacheControls(read=False)) == (False, True)
