"""/healthz says the process serves; /readyz follows the lifecycle (starting, ready, draining)."""
from __future__ import annotations

import aiohttp

from gateway.mock import MockServer
from tests.support.servers import InProcessGateway, gateway_config, start_gateway


async def probe(gw: InProcessGateway, path: str) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(gw.url + path) as resp:
        return resp.status, await resp.json()


async def test_a_started_gateway_is_live_and_ready(gw: InProcessGateway) -> None:
    assert await probe(gw, "/healthz") == (200, {"status": "ok"})
    assert await probe(gw, "/readyz") == (200, {"status": "ready"})


async def test_draining_is_not_ready_but_still_live(gw: InProcessGateway) -> None:
    gw.state.lifecycle.draining = True
    assert await probe(gw, "/readyz") == (503, {"status": "draining"})
    assert await probe(gw, "/healthz") == (200, {"status": "ok"})


async def test_not_yet_ready_says_starting(gw: InProcessGateway) -> None:
    gw.state.lifecycle.ready = False
    assert await probe(gw, "/readyz") == (503, {"status": "starting"})
    gw.state.lifecycle.draining = True  # draining wins over starting: shutdown is the more useful answer
    assert await probe(gw, "/readyz") == (503, {"status": "draining"})


async def test_probes_need_no_credentials(mock_upstream: MockServer) -> None:
    """With client auth on, the kubelet's probes (no key) still get answers."""
    auth = {"mode": "keys", "keys": [{"key": "sk-client-1234567890", "tenant": "t"}]}
    gateway = await start_gateway(gateway_config(mock_upstream.url, auth=auth))
    try:
        assert await probe(gateway, "/healthz") == (200, {"status": "ok"})
        assert await probe(gateway, "/readyz") == (200, {"status": "ready"})
        chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as session, session.post(gateway.url + "/v1/chat/completions",
                                                                    json=chat) as resp:
            assert resp.status == 401  # while the API itself does need a key
    finally:
        await gateway.close()
