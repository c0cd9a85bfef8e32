"""Run N gateway workers on one port, restart the ones that crash, drain them all on SIGTERM.

Each worker is a separate ``gateway serve`` process that binds the same
address with ``SO_REUSEPORT``, so the kernel spreads new connections across
them with no proxy hop and no shared accept lock. The supervisor itself never
touches a request: it binds the address once first (so "address in use" fails
the start instead of a crash loop, and port 0 becomes one concrete port for
all workers), starts the workers, and then only waits for signals and exits.

- A worker that dies while we are not stopping is restarted, with an
  exponential back-off while it keeps dying young (a broken file after a
  reload must not become a fork bomb). Its gauges are removed from the
  metrics directory (``mark_process_dead``); its counters stay, so totals
  remain monotonic.
- SIGTERM/SIGINT are forwarded as SIGTERM: each worker drains exactly as
  ``gateway.server.drain`` does. Workers still alive past the drain budget
  are killed. The exit code is 0 only when every worker exited 0.
- SIGHUP is forwarded, so every worker reloads its config.
- ``PROMETHEUS_MULTIPROC_DIR`` is a fresh temporary directory per supervisor
  run, removed at exit, so ``/metrics`` on any worker reports the whole pod.
- With ``host_state`` (``state.backend: memory``), a private Redis on a Unix socket
  (``gateway/state/host_state.py``) holds the state the workers share; its address is
  in each worker's ``GATEWAY_HOST_STATE_URL``. It is stopped after the workers.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeGuard, cast

from gateway.state.host_state import HOST_STATE_ENV, HostState, start_host_state
from gateway.workers import WORKER_INDEX_ENV, WORKERS_ENV

log = logging.getLogger("gateway.supervisor")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SUPERVISOR_PID_ENV = "GATEWAY_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorConfig:
    workers: int
    host: str
    port: int
    config_path: str | None
    stop_timeout_s: float  # after SIGTERM, workers still alive this long are killed
    backoff_s: float = 0.25  # first restart delay of a worker that died young
    max_backoff_s: float = 10.0
    young_s: float = 10.0  # a worker that lived less than this "died young"
    give_up_after: int = 8  # every worker died young this many times in a row: exit 1
    host_state: bool = False  # start a private Redis the workers share (state.backend: memory)


@dataclass(slots=True)
class _Slot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    young_deaths: int = 0
    exit_code: int | None = None


@dataclass(slots=True)
class Supervisor:
    cfg: SupervisorConfig
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    python: str = sys.executable
    command: Sequence[str] | None = None  # the worker command; default: this gateway (tests inject a stub)
    slots: list[_Slot] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    deaths_changed: asyncio.Event = field(default_factory=asyncio.Event)  # some slot's young_deaths moved
    metrics_dir: str = ""
    port: int = 0
    host: HostState | None = None  # the private Redis the workers share, when started

    async def run(self) -> int:
        """Start the workers and supervise them until a stop signal; return the exit code."""
        loop = asyncio.get_running_loop()
        probe = reserve_port(self.cfg.host, self.cfg.port)
        self.port = probe.getsockname()[1]
        self.metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        if self.cfg.host_state:
            self.host = await start_host_state()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        log.info("supervisor started", extra={"fields": {
            "event": "start", "workers": self.cfg.workers, "port": self.port, "pid": os.getpid()}})
        try:
            self.slots = [_Slot(index=i) for i in range(self.cfg.workers)]
            watchers = [asyncio.create_task(self._watch(slot)) for slot in self.slots]
            gave_up = asyncio.create_task(self._wait_give_up())
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait([stop, gave_up], return_when=asyncio.FIRST_COMPLETED)
            self.stopping.set()
            gave_up.cancel()
            await self._stop_all(watchers)
            codes = [slot.exit_code for slot in self.slots]
            log.info("supervisor stopped", extra={"fields": {"event": "stop", "exit_codes": codes}})
            return 0 if all(code == 0 for code in codes) and not self._all_dying() else 1
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            probe.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            if self.host is not None:
                await self.host.stop()

    def worker_env(self, index: int) -> dict[str, str]:
        env = {**self.env, WORKERS_ENV: str(self.cfg.workers), WORKER_INDEX_ENV: str(index),
               MULTIPROC_ENV: self.metrics_dir, SUPERVISOR_PID_ENV: str(os.getpid())}
        env.pop(HOST_STATE_ENV, None)
        if self.host is not None:
            env[HOST_STATE_ENV] = self.host.url
        return env

    def worker_argv(self) -> list[str]:
        if self.command is not None:
            return list(self.command)
        argv = [self.python, "-m", "gateway", "serve", "--host", self.cfg.host, "--port", str(self.port),
                "--workers", "1"]
        if self.cfg.config_path:
            argv += ["--config", self.cfg.config_path]
        return argv

    async def _watch(self, slot: _Slot) -> None:
        """Keep one worker slot filled until we stop; record its last exit code."""
        loop = asyncio.get_running_loop()
        delay = 0.0
        while not self.stopping.is_set():
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                if self.stopping.is_set():
                    return
            slot.started, slot.exit_code = loop.time(), None
            try:
                slot.proc = await asyncio.create_subprocess_exec(*self.worker_argv(),
                                                                 env=self.worker_env(slot.index))
            except OSError:
                log.exception("could not start a worker", extra={"fields": {"worker": slot.index}})
                slot.exit_code, slot.young_deaths = 127, slot.young_deaths + 1
                self.deaths_changed.set()
                delay = self._backoff(slot)
                continue
            if self.stopping.is_set():  # the stop signal arrived while this worker was being spawned
                slot.proc.send_signal(signal.SIGTERM)
            log.info("worker started", extra={"fields": {"event": "worker_start", "worker": slot.index,
                                                         "pid": slot.proc.pid}})
            code = await slot.proc.wait()
            slot.exit_code = code
            self._forget(slot.proc.pid)
            if self.stopping.is_set():
                return
            lived = loop.time() - slot.started
            slot.young_deaths = slot.young_deaths + 1 if lived < self.cfg.young_s else 0
            self.deaths_changed.set()
            delay = self._backoff(slot)
            log.warning("worker exited; restarting", extra={"fields": {
                "event": "state_change", "state": "worker_restart", "worker": slot.index,
                "pid": slot.proc.pid,
                "exit_code": code, "lived_s": round(lived, 3), "restart_in_s": delay}})

    def _backoff(self, slot: _Slot) -> float:
        """No delay after a worker that lived; doubling delays while it keeps dying young."""
        if not slot.young_deaths:
            return 0.0
        return min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2.0 ** (slot.young_deaths - 1))

    async def _stop_all(self, watchers: Sequence[asyncio.Task[None]]) -> None:
        self._forward(signal.SIGTERM)
        _, pending = await asyncio.wait(watchers, timeout=self.cfg.stop_timeout_s)
        if pending:
            log.warning("workers did not stop in time; killing", extra={"fields": {
                "event": "kill", "workers": [s.index for s in self.slots if _alive(s.proc)]}})
            self._forward(signal.SIGKILL)
            await asyncio.wait(watchers, timeout=5.0)
        for task in watchers:
            task.cancel()

    def _forward(self, sig: int) -> None:
        for slot in self.slots:
            if _alive(slot.proc):
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(sig)

    async def _wait_give_up(self) -> None:
        """Return when every worker keeps dying at start: the orchestrator should see us fail."""
        while not self._all_dying():
            self.deaths_changed.clear()
            await self.deaths_changed.wait()
        log.error("every worker keeps crashing at start; giving up", extra={"fields": {"event": "give_up"}})

    def _all_dying(self) -> bool:
        return bool(self.slots) and all(s.young_deaths >= self.cfg.give_up_after for s in self.slots)

    def _forget(self, pid: int) -> None:
        """Drop a dead worker's live gauges; its counters and histograms stay in the totals."""
        try:
            from prometheus_client import multiprocess

            # prometheus_client.multiprocess is untyped: this is the signature it documents
            mark_dead = cast(Callable[[int, str | None], None], multiprocess.mark_process_dead)
            mark_dead(pid, self.metrics_dir)
        except Exception:  # metrics bookkeeping must never take the supervisor down
            log.exception("could not clean up a dead worker's metrics")


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) with SO_REUSEPORT: fails fast if taken, resolves port 0, keeps it ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def bind_to_parent(env: Mapping[str, str] | None = None) -> None:
    """In a worker: get SIGTERM if the supervisor dies (no orphans serving with nobody to stop them)."""
    env = os.environ if env is None else env
    expected = env.get(SUPERVISOR_PID_ENV)
    if not expected or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if str(os.getppid()) != expected:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _alive(proc: asyncio.subprocess.Process | None) -> TypeGuard[asyncio.subprocess.Process]:
    return proc is not None and proc.returncode is None
