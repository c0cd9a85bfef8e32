"""Live reload: a changed file swaps the runtime, a broken one is refused, pools retire after in-flight
work."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from gateway import reload as reload_module
from gateway.config import parse_config
from gateway.mock import MockServer
from gateway.reload import Reloader, fingerprint, restart_only_changes
from tests.support.servers import InProcessGateway, gateway_config, start_gateway
from tests.support.until import until


def _write(path: Path, cfg: dict[str, Any] | str) -> None:
    """Replace the file atomically (write + rename), as editors and kubelet do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    os.replace(tmp, path)


@pytest_asyncio.fixture
async def gw(mock_upstream: MockServer,
             tmp_path: Path) -> AsyncIterator[tuple[InProcessGateway, Path, dict[str, Any]]]:
    cfg = gateway_config(mock_upstream.url, routes=[{"match": {"model": "gpt-*"}, "upstream": "mock"}])
    path = tmp_path / "config.yaml"
    _write(path, cfg)
    gateway = await start_gateway(cfg)
    try:
        yield gateway, path, cfg
    finally:
        await gateway.close()


def _reloader(gateway: InProcessGateway, path: Path) -> Reloader:
    r = Reloader(gateway.state, path, interval_s=3600)
    r._fingerprint, r._digest = fingerprint(path), ""
    return r


async def test_unchanged_file_is_not_reloaded(gw: tuple[InProcessGateway, Path, dict[str, Any]]) -> None:
    """No change of path, inode, mtime or size: nothing is read or rebuilt."""
    gateway, path, _ = gw
    reloader = _reloader(gateway, path)
    runtime = gateway.state.runtime
    assert await reloader.check() == "unchanged"
    assert gateway.state.runtime is runtime


async def test_changed_route_is_applied_in_one_swap(
    gw: tuple[InProcessGateway, Path, dict[str, Any]],
) -> None:
    """A new route appears in the router; the runtime object is replaced whole; the reload is counted."""
    gateway, path, cfg = gw
    reloader = _reloader(gateway, path)
    old_runtime = gateway.state.runtime
    assert gateway.state.runtime.router.resolve("alias") is None
    _write(path, {**cfg, "routes": [{"match": {"model": "alias"}, "upstream": "mock", "model": "gpt-4o-mini"},
                                    *cfg["routes"]]})
    assert await reloader.check() == "applied"
    route = gateway.state.runtime.router.resolve("alias")
    assert route is not None and route.model == "gpt-4o-mini"
    assert gateway.state.runtime is not old_runtime
    assert await reloader.check() == "unchanged"  # same file again: nothing to do
    assert _sample(gateway, "gateway_config_reloads_total", result="applied") == 1


async def test_broken_file_is_refused_with_one_log_line(gw: tuple[InProcessGateway, Path, dict[str, Any]],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Invalid config: the running runtime stays, one error record lists every problem, counted as refused."""
    gateway, path, cfg = gw
    reloader = _reloader(gateway, path)
    runtime = gateway.state.runtime
    _write(path, {**cfg, "server": {"port": "eighty"}, "bogus": 1})
    with caplog.at_level(logging.ERROR, logger="gateway.reload"):
        assert await reloader.check() == "refused"
    assert gateway.state.runtime is runtime
    records = [r for r in caplog.records if r.name == "gateway.reload"]
    assert len(records) == 1
    problems = records[0].fields["problems"]  # type: ignore[attr-defined]
    assert any("bogus: unknown key" in p for p in problems)
    assert any("server.port: must be int" in p for p in problems)
    assert await reloader.check() == "unchanged"  # the same broken content is not re-logged every poll
    _write(path, "upstreams: [not, a, mapping")
    assert await reloader.check() == "refused"
    _write(path, {**cfg, "routes": [{"match": {"model": "*"}, "upstream": "nowhere"}]})
    assert await reloader.check() == "refused"  # semantic problems too
    assert gateway.state.runtime is runtime
    assert _sample(gateway, "gateway_config_reloads_total", result="refused") == 3


async def test_configmap_symlink_swap_is_detected(gw: tuple[InProcessGateway, Path, dict[str, Any]],
                                                  tmp_path: Path) -> None:
    """Kubelet swaps ..data to a new directory; the watched path is a symlink through it."""
    gateway, _, cfg = gw
    mount = tmp_path / "mount"
    (mount / "v1").mkdir(parents=True)
    (mount / "v1" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (mount / "..data").symlink_to("v1")
    (mount / "config.yaml").symlink_to("..data/config.yaml")
    reloader = _reloader(gateway, mount / "config.yaml")
    (mount / "v2").mkdir()
    new = {**cfg, "routes": [{"match": {"model": "*"}, "upstream": "mock", "name": "catch-all"}]}
    (mount / "v2" / "config.yaml").write_text(yaml.safe_dump(new))
    (mount / "..data_tmp").symlink_to("v2")
    os.replace(mount / "..data_tmp", mount / "..data")  # the atomic swap kubelet does
    assert await reloader.check() == "applied"
    assert gateway.state.runtime.router.resolve("anything").label == "catch-all"  # type: ignore[union-attr]


async def test_pools_unchanged_kept_changed_replaced_after_inflight(
        gw: tuple[InProcessGateway, Path, dict[str, Any]], mock_upstream: MockServer) -> None:
    """An unchanged upstream keeps its pool; a changed one gets a new pool; the old closes when open work
    ends."""
    gateway, path, cfg = gw
    st = gateway.state
    reloader = _reloader(gateway, path)
    extra = {"base_url": mock_upstream.url, "api_key": "k2"}
    _write(path, {**cfg, "upstreams": {**cfg["upstreams"], "second": extra}})
    assert await reloader.check() == "applied"
    mock_pool, second_pool = st.upstreams["mock"], st.upstreams["second"]
    release = asyncio.Event()
    inflight = asyncio.create_task(release.wait())  # stands for a stream that was open at the swap
    st.lifecycle.active.add(inflight)
    _write(path, {**cfg, "upstreams": {**cfg["upstreams"], "second": {**extra, "headers": {"x-v": "2"}}}})
    assert await reloader.check() == "applied"
    assert st.upstreams["mock"] is mock_pool
    assert st.upstreams["second"] is not second_pool and not st.upstreams["second"].session.closed
    await asyncio.sleep(0)
    assert not second_pool.session.closed  # still serving the open stream
    release.set()
    st.lifecycle.active.discard(inflight)
    await until(lambda: second_pool.session.closed)


async def test_switching_the_upstream_client_replaces_the_pool_and_closes_the_old_raw_one(
        gw: tuple[InProcessGateway, Path, dict[str, Any]], mock_upstream: MockServer) -> None:
    """``pool.client`` changed by a reload: the default raw pool serves, keeps its connection alive, and
    is closed once a reload switches to ``aiohttp``; switched back, a new raw pool serves."""
    gateway, path, cfg = gw
    st = gateway.state
    reloader = _reloader(gateway, path)

    async def chat() -> None:
        async with aiohttp.ClientSession() as http, http.post(gateway.base_url + "/chat/completions", json={
                "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}) as resp:
            assert resp.status == 200

    raw = st.upstreams["mock"].raw
    assert raw is not None  # the default
    await chat()
    assert raw.open_count == 1  # the request went through the raw pool, kept alive
    _write(path, {**cfg, "upstreams": {"mock": {**cfg["upstreams"]["mock"], "pool": {"client": "aiohttp"}}}})
    assert await reloader.check() == "applied"
    assert st.upstreams["mock"].raw is None
    await chat()  # served by aiohttp's session
    await until(lambda: raw.open_count == 0, message="the retired raw pool closed")
    _write(path, cfg)
    assert await reloader.check() == "applied"
    again = st.upstreams["mock"].raw
    assert again is not None and again is not raw
    await chat()
    assert again.open_count == 1


async def test_removed_upstream_stays_reachable_until_inflight_ends(
        gw: tuple[InProcessGateway, Path, dict[str, Any]], mock_upstream: MockServer) -> None:
    """A removed upstream's pool is kept for requests routed before the swap, then dropped and closed."""
    gateway, path, cfg = gw
    st = gateway.state
    reloader = _reloader(gateway, path)
    _write(path, {**cfg, "upstreams": {**cfg["upstreams"], "old": {"base_url": mock_upstream.url}}})
    assert await reloader.check() == "applied"
    old_pool = st.upstreams["old"]
    release = asyncio.Event()
    inflight = asyncio.create_task(release.wait())
    st.lifecycle.active.add(inflight)
    _write(path, cfg)
    assert await reloader.check() == "applied"
    assert st.upstreams.get("old") is old_pool and not old_pool.session.closed
    release.set()
    await until(lambda: "old" not in st.upstreams and old_pool.session.closed)


async def test_a_runtime_that_fails_to_build_is_refused_and_new_pools_closed(
        gw: tuple[InProcessGateway, Path, dict[str, Any]], mock_upstream: MockServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy factory raising during the build is treated like an invalid file; pools it made are closed."""
    gateway, path, cfg = gw
    reloader = _reloader(gateway, path)
    runtime, pools = gateway.state.runtime, dict(gateway.state.upstreams)
    created: list[Any] = []
    real_create = reload_module.UpstreamClient.create

    def spy(name: str, upstream: Any) -> Any:
        created.append(real_create(name, upstream))
        return created[-1]

    async def boom(st: Any, config: Any) -> Any:
        raise RuntimeError("factory exploded")

    monkeypatch.setattr(reload_module.UpstreamClient, "create", staticmethod(spy))
    monkeypatch.setattr(reload_module, "build_runtime", boom)
    _write(path, {**cfg, "upstreams": {**cfg["upstreams"], "new": {"base_url": mock_upstream.url}}})
    assert await reloader.check() == "refused"
    assert gateway.state.runtime is runtime and gateway.state.upstreams == pools
    assert len(created) == 1 and created[0].session.closed


async def test_sighup_forces_a_reload_and_draining_refuses_changes(
        gw: tuple[InProcessGateway, Path, dict[str, Any]]) -> None:
    """SIGHUP re-reads the file even when unchanged; once draining, no reload happens."""
    gateway, path, _ = gw
    reloader = Reloader(gateway.state, path, interval_s=3600)
    reloader.start()
    try:
        runtime = gateway.state.runtime
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: gateway.state.runtime is not runtime)
        gateway.state.lifecycle.draining = True
        assert await reloader.reload() == "unchanged"
    finally:
        await reloader.stop()
        gateway.state.lifecycle.draining = False


def test_restart_only_changes_are_named(mock_upstream: MockServer) -> None:
    """Port, workers and the state backend are bound at start: reported as needing a restart."""
    base = gateway_config(mock_upstream.url)
    old = parse_config(base, {})
    new = parse_config({**base, "server": {**base["server"], "port": 9999, "workers": 4, "drain_s": 9},
                        "state": {"backend": "redis"}, "models": {"m": {"encoding": "o200k_base"}}}, {})
    assert restart_only_changes(old, new) == ["server.port", "server.workers", "state", "models.*.encoding"]


def _sample(gateway: InProcessGateway, name: str, **labels: str) -> float:
    value = gateway.state.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
