"""Which tool calls are safe to repeat or cache: read-only, idempotent or write.

The server's ``tools/list`` annotations decide (``readOnlyHint``, ``idempotentHint``,
``destructiveHint``) when ``trust_annotations`` is on; the config's ``tools:`` overrides win.
Unknown tools and untrusted servers are writes: one attempt, never cached.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from policies.mcp.config import McpServerConfig

Safety = Literal["read_only", "idempotent", "write"]


def from_annotations(annotations: Mapping[str, Any] | None) -> Safety:
    if not annotations:
        return "write"
    if annotations.get("readOnlyHint") is True:
        return "read_only"
    if annotations.get("idempotentHint") is True and annotations.get("destructiveHint") is not True:
        return "idempotent"
    return "write"


def classify(tool: str, server: McpServerConfig, annotated: Safety | None) -> Safety:
    """The safety of ``tool`` given the server's config and what its catalog said (None: unknown)."""
    base: Safety = annotated if (annotated is not None and server.trust_annotations) else "write"
    override = server.tools.get(tool)
    if override is None:
        return base
    if override.read_only is True:
        return "read_only"
    if override.read_only is False:
        base = "idempotent" if override.idempotent is True else "write"
    elif override.idempotent is not None and base != "read_only":
        base = "idempotent" if override.idempotent else "write"
    return base


def catalog_safety(result: Mapping[str, Any]) -> dict[str, Safety]:
    """``{tool name: safety}`` from a ``tools/list`` result."""
    found: dict[str, Safety] = {}
    for tool in result.get("tools") or ():
        if isinstance(tool, dict) and isinstance(tool.get("name"), str):
            found[tool["name"]] = from_annotations(tool.get("annotations"))
    return found
