"""Tell the server the gateway gave up on a request (``notifications/cancelled``, best effort)."""
from __future__ import annotations

import asyncio

import aiohttp

from policies.mcp import jsonrpc as rpc
from policies.mcp.call import Call
from policies.mcp.deps import JSON, SSE
from policies.mcp.upstream import McpServer


def cancel_upstream(call: Call) -> None:
    note = {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": call.msg.id, "reason": "gateway timeout"},
    }
    headers = {"content-type": JSON, "accept": f"{JSON}, {SSE}", **call.server.cfg.headers}
    body = rpc.canonical_json(note)
    task = asyncio.get_running_loop().create_task(_post_quietly(call.server, headers, body))
    task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)


async def _post_quietly(server: McpServer, headers: dict[str, str], body: bytes) -> None:
    """The caller already answered and counted the call; a failure here changes nothing."""
    try:
        resp = await server.send("POST", headers, body)
        resp.release()
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
