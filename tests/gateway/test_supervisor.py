"""The supervisor: N workers, restart on crash, SIGTERM forwarded, exit code, metrics dir lifecycle.

The worker here is a tiny stub process (``STUB``) so these tests exercise the
supervisor's own logic quickly; tests/e2e/test_workers.py runs real gateways.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from gateway.supervisor import Supervisor, SupervisorConfig, reserve_port
from tests.support.until import until

# Records its environment, touches a file on SIGHUP, exits with $STUB_EXIT on SIGTERM.
STUB = r"""
import json, os, signal, sys, pathlib
out = pathlib.Path(sys.argv[1])
mode = os.environ.get("STUB_MODE", "ok")
if mode == "crash":
    sys.exit(3)
keys = ("GATEWAY_WORKERS", "GATEWAY_WORKER_INDEX", "PROMETHEUS_MULTIPROC_DIR", "GATEWAY_SUPERVISOR_PID",
        "GATEWAY_HOST_STATE_URL")
def on_term(*_):
    sys.exit(int(os.environ.get("STUB_EXIT", "0")))
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else on_term)
signal.signal(signal.SIGHUP, lambda *_: (out / f"hup-{os.getpid()}").touch())
(out / f"worker-{os.getpid()}.json").write_text(json.dumps({k: os.environ.get(k) for k in keys}))
while True:
    signal.pause()
"""


def _supervisor(tmp_path: Path, workers: int = 2, env: dict[str, str] | None = None,
                **cfg: float) -> Supervisor:
    config = SupervisorConfig(workers=workers, host="127.0.0.1", port=0, config_path=None,
                              stop_timeout_s=cfg.pop("stop_timeout_s", 10.0), backoff_s=0.01,
                              max_backoff_s=0.05, **cfg)  # type: ignore[arg-type]  # host_state: bool
    return Supervisor(config, env={**os.environ, **(env or {})},
                      command=[sys.executable, "-c", STUB, str(tmp_path)])


def _started(tmp_path: Path) -> dict[int, dict[str, str]]:
    found = {}
    for path in tmp_path.glob("worker-*.json"):
        try:
            found[int(path.stem.split("-")[1])] = json.loads(path.read_text())
        except ValueError:
            continue  # being written
    return found


async def test_starts_n_workers_with_their_environment(tmp_path: Path) -> None:
    """Each worker gets GATEWAY_WORKERS=N, its index, the supervisor pid and one shared metrics dir."""
    sup = _supervisor(tmp_path, workers=3)
    run = asyncio.create_task(sup.run())
    await until(lambda: len(_started(tmp_path)) == 3)
    envs = list(_started(tmp_path).values())
    assert {e["GATEWAY_WORKER_INDEX"] for e in envs} == {"0", "1", "2"}
    assert {e["GATEWAY_WORKERS"] for e in envs} == {"3"}
    assert {e["GATEWAY_SUPERVISOR_PID"] for e in envs} == {str(os.getpid())}
    dirs = {e["PROMETHEUS_MULTIPROC_DIR"] for e in envs}
    assert len(dirs) == 1 and Path(dirs.pop()).is_dir()  # noqa: ASYNC240  one stat of a local dir
    sup.stopping.set()
    assert await run == 0


async def test_host_state_gives_every_worker_one_private_redis(tmp_path: Path) -> None:
    """host_state=True: one redis-server on a Unix socket, its URL in every worker's env, gone at stop."""
    sup = _supervisor(tmp_path, workers=2, host_state=True)
    run = asyncio.create_task(sup.run())
    await until(lambda: len(_started(tmp_path)) == 2)
    urls = {e["GATEWAY_HOST_STATE_URL"] for e in _started(tmp_path).values()}
    assert len(urls) == 1 and urls.pop().startswith("unix://")
    assert sup.host is not None and sup.host.proc.returncode is None
    sup.stopping.set()
    assert await run == 0
    assert sup.host.proc.returncode is not None
    assert not Path(sup.host.directory).exists()  # noqa: ASYNC240  one stat of a local dir


async def test_without_host_state_workers_get_no_url(tmp_path: Path) -> None:
    """Positive control's counterpart: the default (redis backend, or one worker) starts no Redis."""
    sup = _supervisor(tmp_path, workers=1, env={"GATEWAY_HOST_STATE_URL": "unix:///stale"})
    run = asyncio.create_task(sup.run())
    await until(lambda: len(_started(tmp_path)) == 1)
    assert [e["GATEWAY_HOST_STATE_URL"] for e in _started(tmp_path).values()] == [None]
    assert sup.host is None
    sup.stopping.set()
    assert await run == 0


async def test_a_killed_worker_is_restarted_and_its_live_gauges_dropped(tmp_path: Path) -> None:
    """SIGKILL one worker: the same slot comes back with a new pid; its gauge_live file is removed."""
    sup = _supervisor(tmp_path, workers=2)
    run = asyncio.create_task(sup.run())
    await until(lambda: len(_started(tmp_path)) == 2)
    victim = sup.slots[0].proc.pid  # type: ignore[union-attr]
    live = Path(sup.metrics_dir) / f"gauge_livesum_{victim}.db"
    kept = Path(sup.metrics_dir) / f"counter_{victim}.db"
    live.write_bytes(b"")
    kept.write_bytes(b"")
    os.kill(victim, signal.SIGKILL)
    await until(lambda: len(_started(tmp_path)) == 3)
    assert sup.slots[0].proc.pid != victim  # type: ignore[union-attr]
    assert not live.exists() and kept.exists()  # counters stay so totals remain monotonic
    sup.stopping.set()
    assert await run == 0  # the replacement exited 0 on SIGTERM
    assert not Path(sup.metrics_dir).exists()  # noqa: ASYNC240  one stat of a local dir


async def test_sigterm_is_forwarded_and_a_failed_drain_fails_the_exit_code(tmp_path: Path) -> None:
    """Every worker gets SIGTERM; one exiting non-zero makes the supervisor exit 1."""
    sup = _supervisor(tmp_path, workers=2, env={"STUB_EXIT": "4"})
    run = asyncio.create_task(sup.run())
    await until(lambda: len(_started(tmp_path)) == 2)
    os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's own handler, as Kubernetes would send it
    assert await run == 1
    assert [s.exit_code for s in sup.slots] == [4, 4]


async def test_workers_that_ignore_sigterm_are_killed_after_the_budget(tmp_path: Path) -> None:
    """A worker that never exits is SIGKILLed once stop_timeout_s has passed; exit code 1."""
    sup = _supervisor(tmp_path, workers=1, env={"STUB_MODE": "stubborn"}, stop_timeout_s=0.5)
    run = asyncio.create_task(sup.run())
    await until(lambda: len(_started(tmp_path)) == 1)
    sup.stopping.set()
    assert await run == 1
    assert sup.slots[0].exit_code == -signal.SIGKILL


async def test_sighup_is_forwarded_to_every_worker(tmp_path: Path) -> None:
    """SIGHUP to the supervisor reaches each worker (each reloads its config)."""
    sup = _supervisor(tmp_path, workers=2)
    run = asyncio.create_task(sup.run())
    await until(lambda: len(_started(tmp_path)) == 2)
    os.kill(os.getpid(), signal.SIGHUP)
    pids = {s.proc.pid for s in sup.slots}  # type: ignore[union-attr]
    await until(lambda: {int(p.name.split("-")[1]) for p in tmp_path.glob("hup-*")} == pids)
    sup.stopping.set()
    assert await run == 0


async def test_workers_that_keep_crashing_at_start_make_it_give_up(tmp_path: Path) -> None:
    """Every slot dying young give_up_after times in a row ends the supervisor with exit 1."""
    sup = _supervisor(tmp_path, workers=2, env={"STUB_MODE": "crash"}, give_up_after=3)
    assert await asyncio.wait_for(sup.run(), 20) == 1
    assert all(s.young_deaths >= 3 for s in sup.slots)


def test_reserve_port_resolves_port_zero_and_fails_fast_when_taken() -> None:
    """Port 0 becomes one concrete port; an address held by a plain listener is refused at once."""
    sock = reserve_port("127.0.0.1", 0)
    try:
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            reserve_port("127.0.0.1", taken.getsockname()[1]).close()


def test_worker_argv_runs_this_gateway_with_the_resolved_port() -> None:
    """Workers run `python -m gateway serve` on the supervisor's port, with the same config file."""
    sup = Supervisor(SupervisorConfig(workers=2, host="0.0.0.0", port=8080,
                                      config_path="/etc/gateway/config.yaml", stop_timeout_s=30))
    sup.port = 8080
    argv = sup.worker_argv()
    assert argv[1:4] == ["-m", "gateway", "serve"]
    assert argv[argv.index("--port") + 1] == "8080" and argv[argv.index("--workers") + 1] == "1"
    assert argv[argv.index("--config") + 1] == "/etc/gateway/config.yaml"
