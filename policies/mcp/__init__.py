"""MCP tool providers: ``/mcp/{server}`` proxied to a Streamable HTTP MCP server (issue 19)."""
