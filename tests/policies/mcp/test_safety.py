from __future__ import annotations

from policies.mcp.config import McpServerConfig, McpToolConfig
from policies.mcp.safety import catalog_safety, classify, from_annotations


def server(**kw: object) -> McpServerConfig:
    return McpServerConfig(url="http://t/mcp", **kw)  # type: ignore[arg-type]


def test_annotations() -> None:
    assert from_annotations({"readOnlyHint": True}) == "read_only"
    assert from_annotations({"idempotentHint": True, "destructiveHint": False}) == "idempotent"
    assert from_annotations({"idempotentHint": True, "destructiveHint": True}) == "write"
    assert from_annotations(None) == "write" and from_annotations({}) == "write"


def test_overrides_win_and_untrusted_is_write() -> None:
    cfg = server(tools={"a": McpToolConfig(read_only=True), "b": McpToolConfig(read_only=False),
                        "c": McpToolConfig(idempotent=True)})
    assert classify("a", cfg, None) == "read_only"
    assert classify("b", cfg, "read_only") == "write"
    assert classify("c", cfg, "write") == "idempotent"
    assert classify("x", cfg, None) == "write"
    assert classify("x", server(trust_annotations=False), "read_only") == "write"
    assert classify("a", server(trust_annotations=False, tools={"a": McpToolConfig(read_only=True)}), None) \
        == "read_only"


def test_catalog() -> None:
    result = {"tools": [{"name": "q", "annotations": {"readOnlyHint": True}}, {"name": "w"}, "junk"]}
    assert catalog_safety(result) == {"q": "read_only", "w": "write"}
