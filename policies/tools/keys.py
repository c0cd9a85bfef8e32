"""Typed per-request values of the tool routes, shared by their handler and their cache layer."""
from __future__ import annotations

from gateway.chain import Policy
from gateway.exchange import StateKey

TOOL_READ: StateKey[bool] = StateKey("tool.read")  # a read (GET/HEAD, or a read-only tool): safe to cache
# The read cache of tool routes, registered by the cache feature; outermost in each tool chain.
TOOL_CACHE: StateKey[Policy] = StateKey("tools.cache")
