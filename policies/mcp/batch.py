"""JSON-RPC batches: only where the negotiated protocol version allows them (2025-03-26).

The version is the client's ``MCP-Protocol-Version`` header; a client that sends none is taken
for 2025-03-26, as the specification says a server should. Later versions removed batching, so
a batch from them gets HTTP 400 with JSON-RPC error -32600 and nothing is forwarded. An empty
batch, an element that is not a JSON-RPC message, or an ``initialize`` inside a batch are
invalid in every version.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.mcp import jsonrpc as rpc

BATCH_VERSIONS = frozenset({"2025-03-26"})
ASSUMED_VERSION = "2025-03-26"  # no MCP-Protocol-Version header


def check(headers: Mapping[str, str], batch: list[Any]) -> str:
    """``allowed``, or raise ``BadMessage`` (-32600) saying why not."""
    version = headers.get("mcp-protocol-version", ASSUMED_VERSION).strip()
    if version not in BATCH_VERSIONS:
        raise rpc.BadMessage(
            rpc.INVALID_REQUEST,
            f"Invalid Request: JSON-RPC batches are not allowed in protocol version {version[:40]}",
        )
    if not batch:
        raise rpc.BadMessage(rpc.INVALID_REQUEST, "Invalid Request: empty batch")
    for item in batch:
        if rpc.message(item).method == "initialize":
            raise rpc.BadMessage(rpc.INVALID_REQUEST, "Invalid Request: initialize may not be batched")
    return "allowed"
