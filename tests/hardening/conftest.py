"""Hardening fixtures: the e2e ones (real gateway, fake provider, real Redis) plus fault proxies."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest_asyncio

from tests.e2e.conftest import client, direct, gateway, make_gateway  # noqa: F401  (re-exported fixtures)
from tests.support.fault_proxy import FaultProxy

ProxyFactory = Callable[..., Awaitable[FaultProxy]]


@pytest_asyncio.fixture
async def fault_proxy() -> AsyncIterator[ProxyFactory]:
    """``await fault_proxy(port)``: a started proxy to 127.0.0.1:port, closed after the test."""
    started: list[FaultProxy] = []

    async def make(port: int, scheme: str = "http") -> FaultProxy:
        proxy = await FaultProxy("127.0.0.1", port, scheme=scheme).start()
        started.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in started:
            await proxy.close()
