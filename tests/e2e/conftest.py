"""End-to-end fixtures: the real gateway in front of the fake provider, the openai SDK as client."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio
from openai import AsyncOpenAI

from gateway.mock import MockServer
from tests.e2e.fleet import fleet, mock_process, pair  # noqa: F401  the shared-state fleets (issue 20)
from tests.support.servers import InProcessGateway, gateway_config, start_gateway

GatewayFactory = Callable[..., Awaitable[InProcessGateway]]


@pytest_asyncio.fixture
async def make_gateway(mock_upstream: MockServer) -> AsyncIterator[GatewayFactory]:
    started: list[InProcessGateway] = []

    async def make(env: dict[str, str] | None = None, **overrides: Any) -> InProcessGateway:
        gw = await start_gateway(gateway_config(mock_upstream.url, **overrides), env=env)
        started.append(gw)
        return gw

    try:
        yield make
    finally:
        for gw in started:
            await gw.close()


@pytest_asyncio.fixture
async def gateway(make_gateway: GatewayFactory) -> InProcessGateway:
    return await make_gateway()


@pytest_asyncio.fixture
async def client(gateway: InProcessGateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=gateway.base_url, api_key="sk-client-secret", max_retries=0) as c:
        yield c


@pytest_asyncio.fixture
async def direct(mock_upstream: MockServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=mock_upstream.url, api_key="sk-direct", max_retries=0) as c:
        yield c
