"""`--workers 2` without a redis-server for the host state: one `host_state_unavailable` line, each worker
serves from its own state, and /admin/stats says its figures are one worker's."""
from __future__ import annotations

import aiohttp
from openai import AsyncOpenAI

from gateway.mock import MockServer
from tests.support.servers import gateway_config, spawn_gateway, wait_ready
from tests.support.until import until

ADMIN = "adm-unavailable-e2e"


async def test_no_binary_means_per_worker_state_said_out_loud(mock_upstream: MockServer) -> None:
    gw = spawn_gateway(gateway_config(mock_upstream.url, admin={"api_key": ADMIN}),
                       extra_args=["--workers", "2"], env={"GATEWAY_REDIS_SERVER": "/nonexistent/redis"})
    try:
        await wait_ready(gw.url, timeout_s=60)
        async with AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0) as client:
            reply = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content  # served, from per-worker state
        async with aiohttp.ClientSession() as session, session.get(
                gw.url + "/admin/stats", headers={"authorization": f"Bearer {ADMIN}"}) as resp:
            summary = await resp.json()
        assert summary["scope"] == "worker" and summary["shared"]["local_only"] is True
        assert "this worker's only" in summary["shared"]["banner"]
        await until(lambda: "host_state_unavailable" in gw.logs(), timeout=10, interval=0.05)
        assert gw.logs().count("host_state_unavailable") == 1  # logged once, by the supervisor
    finally:
        gw.stop()
