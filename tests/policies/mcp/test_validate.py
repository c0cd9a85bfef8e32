from __future__ import annotations

from gateway.config_model import Config
from policies.mcp.config import McpConfig, McpRateLimit, McpServerConfig, McpToolConfig
from policies.mcp.validate import problems


def test_problems_name_the_dotted_path_and_never_the_url() -> None:
    cfg = Config(mcp=McpConfig(servers={
        "ok": McpServerConfig(url="https://tools.example.com/mcp"),
        "bad": McpServerConfig(url="ftp://user:secret@host", catalog_ttl_s=-1,
                               rate_limit=McpRateLimit(rpm=0), tools={"t": McpToolConfig(timeout_s=0)}),
    }))
    found = problems(cfg)
    assert found == ["mcp.servers.bad.url: must be an http(s) URL", "mcp.servers.bad.catalog_ttl_s: must be >= 0",
                     "mcp.servers.bad.rate_limit.rpm: must be > 0", "mcp.servers.bad.tools.t.timeout_s: must be > 0"]
    assert not any("secret" in line for line in found)
