"""An agent conversation where both the LLM calls and the MCP tool calls go through the gateway.

The OpenAI Agents SDK (``openai-agents``) runs an agent whose model is reached through the gateway's
``/v1`` (the mock provider answers with a tool call, then with text once the tool result is in) and
whose tools come from the SDK MCP server reached through the gateway's ``/mcp/quotes``
(``MCPServerStreamableHttp``). Only the LLM provider is fake.
"""
from __future__ import annotations

from typing import Any

from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from agents.items import ToolCallItem, ToolCallOutputItem
from agents.mcp import MCPServerStreamableHttp, create_static_tool_filter
from openai import AsyncOpenAI

from tests.e2e.test_mcp import mcp_server
from tests.support.mcp_server import McpServerThread
from tests.support.until import until

__all__ = ["mcp_server"]  # the module-scoped SDK server fixture
KEY = "sk-agent-team"


async def test_agent_calls_an_mcp_tool_through_the_gateway(
    make_gateway: Any, mcp_server: McpServerThread
) -> None:
    await until(lambda: mcp_server.server.started, message="the MCP server did not start")
    mcp_server.calls.clear()
    gw = await make_gateway(
        auth={"mode": "keys", "keys": [{"key": KEY, "tenant": "agents"}]},
        mcp={"servers": {"quotes": {"url": mcp_server.url, "headers": {"x-upstream-key": "server-secret"}}}},
    )
    set_tracing_disabled(True)  # no export to OpenAI's tracing backend
    tools = MCPServerStreamableHttp(
        params={"url": gw.url + "/mcp/quotes", "headers": {"Authorization": f"Bearer {KEY}"}},
        tool_filter=create_static_tool_filter(allowed_tool_names=["get_quote"]),
        cache_tools_list=True,
        client_session_timeout_seconds=10,
    )
    async with AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as llm, tools:
        agent = Agent(
            name="quotes-agent",
            instructions="Answer questions about stock prices using your tools.",
            model=OpenAIChatCompletionsModel(model="gpt-4o", openai_client=llm),
            mcp_servers=[tools],
        )
        result = await Runner.run(agent, "Use the tool to get the IBM quote.", max_turns=4)
    calls = [i for i in result.new_items if isinstance(i, ToolCallItem)]
    outputs = [i for i in result.new_items if isinstance(i, ToolCallOutputItem)]
    assert [getattr(c.raw_item, "name", None) for c in calls] == ["get_quote"]
    assert len(outputs) == 1 and ": 42.0" in str(outputs[0].output)  # the server's answer reached the model
    assert isinstance(result.final_output, str) and result.final_output
    assert mcp_server.calls["get_quote"] == 1
    registry = gw.state.metrics.registry
    labels = {"server": "quotes", "method": "tools/call", "tool": "get_quote", "outcome": "ok"}
    await until(lambda: registry.get_sample_value("gateway_mcp_requests_total", labels) == 1)
    llm_calls = sum(
        s.value for m in registry.collect() if m.name == "gateway_requests" for s in m.samples
        if s.name == "gateway_requests_total" and s.labels.get("upstream") == "mock"
    )
    assert llm_calls == 2  # the tool call, then the answer with the tool's result
