"""Batches only where the protocol version allows them; invalid batches in every version."""
from __future__ import annotations

import pytest

from policies.mcp import jsonrpc as rpc
from policies.mcp.batch import check

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


def test_allowed_for_2025_03_26_and_without_a_version_header() -> None:
    assert check({"mcp-protocol-version": "2025-03-26"}, [PING, PING]) == "allowed"
    assert check({}, [PING]) == "allowed"  # no header: the spec says assume 2025-03-26


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25", "1999-01-01"])
def test_refused_for_later_versions(version: str) -> None:
    with pytest.raises(rpc.BadMessage, match=f"not allowed in protocol version {version}") as bad:
        check({"mcp-protocol-version": version}, [PING])
    assert bad.value.code == rpc.INVALID_REQUEST


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize"}


@pytest.mark.parametrize("batch", [[], [PING, {"id": 2}], [INIT]])
def test_invalid_batches(batch: list[object]) -> None:
    with pytest.raises(rpc.BadMessage) as bad:
        check({}, batch)
    assert bad.value.code == rpc.INVALID_REQUEST
