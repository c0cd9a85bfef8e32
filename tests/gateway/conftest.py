"""The gateway tests' default in-process gateway (a module needing another config defines its own ``gw``)."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from gateway.mock import MockServer
from tests.support.servers import InProcessGateway, gateway_config, start_gateway


@pytest_asyncio.fixture
async def gw(mock_upstream: MockServer) -> AsyncIterator[InProcessGateway]:
    """A gateway with the default test config in front of the fake provider."""
    gateway = await start_gateway(gateway_config(mock_upstream.url))
    try:
        yield gateway
    finally:
        await gateway.close()
