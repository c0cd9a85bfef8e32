"""Hardening fixtures: the e2e ones (real gateway, fake provider, real Redis) plus fault proxies."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio

from gateway.mock import MockConfig, MockServer, start_mock
from tests.e2e.conftest import client, direct, gateway, make_gateway  # noqa: F401  (re-exported fixtures)
from tests.hardening.bad_cases import KEY, LIMIT
from tests.hardening.scripted import scripted  # noqa: F401  (re-exported fixture: a provider the test scripts)
from tests.support.fault_proxy import FaultProxy
from tests.support.servers import InProcessGateway, gateway_config, start_gateway

ProxyFactory = Callable[..., Awaitable[FaultProxy]]
MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")  # tests sharing the module's gateway (``env``)


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


class ErrorLog(logging.Handler):
    """Collects every ERROR (or worse) line the gateway or aiohttp writes:
    a client's bad bytes must cause none."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("gateway", "aiohttp", "policies")) and not record.name.startswith(
            "gateway.mock"
        ):
            self.records.append(record)


@dataclass
class Env:
    gateway: InProcessGateway
    mock: MockServer
    session: aiohttp.ClientSession
    errors: ErrorLog

    def upstream_calls(self) -> int:
        return sum(1 for a in self.mock.recorder.attempts if not a.path.endswith("/models"))


def catalogue_config(mock_url: str) -> dict[str, object]:
    return gateway_config(
        mock_url, server={"max_body_bytes": LIMIT, "drain_s": 5, "grace_s": 0, "body_timeout_s": 1.0},
        auth={"mode": "keys", "keys": [{"key": KEY, "tenant": "catalogue"}]},
        routes=[{"match": {"model": "gpt-*"}, "upstream": "mock"},
                {"match": {"model": "text-embedding-*"}, "upstream": "mock"}])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env() -> AsyncIterator[Env]:
    """One fake provider and one gateway (keys mode, 64 KB bodies, 1 s body timeout) for a whole module."""
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    mock = await start_mock(MockConfig())
    gw = await start_gateway(catalogue_config(mock.url))
    session = aiohttp.ClientSession()
    try:
        yield Env(gw, mock, session, errors)
    finally:
        await session.close()
        await gw.close()
        await mock.close()
        logging.getLogger().removeHandler(errors)
