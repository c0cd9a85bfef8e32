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
    assert found == [
        "mcp.servers.bad.url: must be an http(s) URL",
        "mcp.servers.bad.catalog_ttl_s: must be >= 0",
        "mcp.servers.bad.rate_limit.rpm: must be > 0",
        "mcp.servers.bad.tools.t.timeout_s: must be > 0",
    ]
    assert not any("secret" in line for line in found)


ISSUE_EXAMPLE = """
upstreams: {openai: {base_url: "http://127.0.0.1:9/v1"}}
mcp:
  servers:
    quotes:
      url: https://tools.example.com/mcp
      headers: {Authorization: "Bearer ${QUOTES_KEY}"}
      timeouts: {connect_s: 2, first_byte_s: 10, total_s: 30}
      retry: {max_attempts: 3, base_delay_s: 0.2}
      circuit_breaker: {consecutive_failures: 5, open_s: 10}
      rate_limit: {rpm: 600, max_concurrency: 16}
      trust_annotations: true
      catalog_ttl_s: 300
      result_cache_ttl_s: 0
      tenants: null
      tools:
        get_quote: {read_only: true, timeout_s: 5, cache_ttl_s: 30,
                    fallback_result: {text: "Quotes are unavailable right now; try again later."}}
        place_order: {read_only: false, timeout_s: 20}
"""


def test_the_issue_example_loads() -> None:
    from gateway.config import parse_config_text

    cfg = parse_config_text(ISSUE_EXAMPLE, env={"QUOTES_KEY": "k"})
    quotes = cfg.mcp.servers["quotes"]
    assert quotes.headers == {"Authorization": "Bearer k"} and quotes.rate_limit.max_concurrency == 16
    assert (
        quotes.tools["get_quote"].fallback_result is not None
        and quotes.tools["place_order"].read_only is False
    )


def test_a_bad_block_is_reported_by_the_loader() -> None:
    import pytest

    from gateway.config import ConfigError, parse_config_text

    with pytest.raises(ConfigError, match=r"mcp\.servers\.q\.url"):
        parse_config_text(
            'upstreams: {openai: {base_url: "http://127.0.0.1:9/v1"}}\nmcp: {servers: {q: {url: nope}}}\n'
        )


def test_queue_settings_are_checked() -> None:
    rl = McpRateLimit(max_queue=-1, max_queue_wait_s=-0.5, max_concurrency=0)
    cfg = Config(mcp=McpConfig(servers={"s": McpServerConfig(url="http://h/mcp", rate_limit=rl)}))
    assert problems(cfg) == [
        "mcp.servers.s.rate_limit.max_concurrency: must be > 0",
        "mcp.servers.s.rate_limit.max_queue: must be >= 0",
        "mcp.servers.s.rate_limit.max_queue_wait_s: must be >= 0",
    ]
    assert problems(Config(mcp=McpConfig(servers={"s": McpServerConfig(url="http://h/mcp")}))) == []
