"""What a gateway process loads: the shipped config (`make run`) imports no Redis client, no
OpenTelemetry and no tokenizer, because nothing it turns on needs them (issue 21: idle RSS <= 64 MB;
redis-py alone, with the OpenTelemetry and cryptography modules it pulls in, was ~10 MB of it).

The real ``gateway serve`` runs in a subprocess with a ``sitecustomize`` that writes the process's
``sys.modules`` on SIGUSR2, after it has answered a chat and a stream from the openai SDK. The positive
control turns on the three features that need them (shared state in Redis, tracing, a token limit)
and sees all three imported, so the check can fail.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import yaml
from openai import AsyncOpenAI

from gateway.mock import MockServer
from tests.e2e.test_workers import serving_workers
from tests.support.servers import GatewayProcess, free_port, spawn_gateway, wait_ready
from tests.support.until import until

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("redis", "opentelemetry", "tiktoken")
HOOK = """
import os, signal, sys
def _dump(sig, frame):
    path = os.environ["FOOTPRINT_OUT"] + "." + str(os.getpid())
    with open(path + ".tmp", "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
    os.replace(path + ".tmp", path)
signal.signal(signal.SIGUSR2, _dump)
"""


def shipped_config(**extra: Any) -> dict[str, Any]:
    """``config.yaml`` as `make run` reads it (its ``${...}`` are expanded by the gateway), plus ``extra``."""
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["server"] = {**cfg["server"], "drain_s": 1, "grace_s": 0}
    return {**cfg, **extra}


def spawn(cfg: dict[str, Any], mock: MockServer, tmp_path: Path, workers: int) -> GatewayProcess:
    """``gateway serve`` whose every Python process writes its modules to ``tmp_path/modules.<pid>`` on
    SIGUSR2."""
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "FOOTPRINT_OUT": str(tmp_path / "modules"),
           "OPENAI_BASE_URL_UPSTREAM": mock.url, "OPENAI_API_KEY": "sk-upstream-secret"}
    return spawn_gateway(cfg, extra_args=["--workers", str(workers)], env=env)


async def modules_of(pid: int, tmp_path: Path) -> set[str]:
    out = tmp_path / f"modules.{pid}"
    os.kill(pid, signal.SIGUSR2)
    await until(out.exists, timeout=10.0, interval=0.02, message=f"process {pid} wrote its modules")
    return {name.split(".")[0] for name in out.read_text().split()}


async def modules_after_traffic(cfg: dict[str, Any], mock: MockServer, tmp_path: Path) -> set[str]:
    gw = spawn(cfg, mock, tmp_path, workers=1)
    try:
        await wait_ready(gw.url)
        client = AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0)
        answer = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "footprint"}])
        assert answer.choices[0].message.content
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "footprint stream"}], stream=True)
        assert [chunk async for chunk in stream]
        await client.close()
        return await modules_of(gw.proc.pid, tmp_path)
    finally:
        gw.stop()


async def test_the_shipped_config_loads_no_redis_client_tracer_or_tokenizer(
        mock_upstream: MockServer, tmp_path: Path) -> None:
    loaded = await modules_after_traffic(shipped_config(), mock_upstream, tmp_path)
    assert "aiohttp" in loaded and "gateway" in loaded  # the hook saw the serving process
    assert not set(HEAVY) & loaded


async def test_the_features_that_need_them_load_them(mock_upstream: MockServer, tmp_path: Path) -> None:
    cfg = shipped_config(
        state={"backend": "redis", "redis_url": f"redis://127.0.0.1:{free_port()}", "timeout_ms": 100},
        tracing={"enabled": True, "exporter": "memory"})
    cfg["upstreams"]["openai"]["rate_limit"] = {"tpm": 1_000_000}
    loaded = await modules_after_traffic(cfg, mock_upstream, tmp_path)
    assert set(HEAVY) <= loaded


async def test_the_supervisor_loads_no_http_server(mock_upstream: MockServer, tmp_path: Path) -> None:
    """``--workers 2``: the supervisor validates the config (the features' config modules) and starts
    workers; it never serves, so it imports no aiohttp (~14 MB less). Its workers do (the positive
    control)."""
    gw = spawn(shipped_config(), mock_upstream, tmp_path, workers=2)
    try:
        await wait_ready(gw.url)
        # Serving: a worker signalled before its hook is installed would die of SIGUSR2 (its default).
        await until(lambda: len(serving_workers(gw)) == 2, timeout=30.0, interval=0.05, message="two workers")
        supervisor = await modules_of(gw.proc.pid, tmp_path)
        worker = await modules_of(min(serving_workers(gw)), tmp_path)
    finally:
        gw.stop()
    assert "gateway" in supervisor and not {"aiohttp", *HEAVY} & supervisor
    assert "aiohttp" in worker

