"""How many worker processes to run: the CPUs this container may really use.

``os.cpu_count()`` reports the host's cores, which in a container with a CPU
limit is wrong by a wide margin (a pod limited to 1 CPU on a 64-core node would
fork 64 workers that then fight over one CPU's quota and get throttled). We
take the smallest of: the CPUs in our affinity mask (``sched_getaffinity``:
cpusets, ``taskset``, Kubernetes' static CPU manager) and the CFS quota
(cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``),
rounded down with a floor of one, as Go's automaxprocs does: a worker that
can only ever get half a CPU adds context switches, not throughput.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
WORKERS_ENV = "GATEWAY_WORKERS"  # set by the supervisor in each worker's environment
WORKER_INDEX_ENV = "GATEWAY_WORKER_INDEX"  # 0..N-1; its presence means "I am a supervised worker"


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (falls back to the host count where unsupported)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota in CPUs (e.g. 1.5), or None when there is no limit or no cgroup to read."""
    for directory in _cgroup_dirs(root, proc_cgroup):
        v2 = _read(directory / "cpu.max")
        if v2 is not None:
            parts = v2.split()
            if len(parts) == 2 and parts[0] != "max":
                return _ratio(parts[0], parts[1])
            if parts and parts[0] == "max":
                continue  # no limit here; a parent may still limit us
        quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
        if quota is not None and period is not None and not quota.startswith("-"):
            return _ratio(quota, period)
    return None


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """CPUs we may use: min(affinity, floor(cgroup quota)), at least 1."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def resolve_workers(cli: int | None, configured: int | None) -> int:
    """``--workers`` beats ``server.workers`` beats the CPUs available to the container."""
    for value in (cli, configured):
        if value is not None:
            if value < 1:
                raise ValueError(f"workers must be >= 1, got {value}")
            return value
    return available_cpus()


def workers_from_env(env: Mapping[str, str] | None = None) -> int:
    """How many sibling workers share this host's port (1 when not supervised).

    The memory backends of per-key limits divide their limit by this number so
    that N workers together admit what one process would (see docs/kubernetes.md).
    """
    raw = (os.environ if env is None else env).get(WORKERS_ENV, "")
    try:
        return max(1, int(raw))
    except ValueError:
        return 1


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """Our own cgroup directory and its parents up to the root, most specific first."""
    rel = ""
    text = _read(proc_cgroup)
    for line in (text or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3 and (fields[0] == "0" or "cpu" in fields[1].split(",")):
            rel = fields[2].strip().lstrip("/")
            break
    dirs: list[Path] = []
    v1 = root / "cpu,cpuacct" if (root / "cpu,cpuacct").is_dir() else root / "cpu"
    for base in (root, v1) if v1.is_dir() else (root,):
        here = base / rel if rel else base
        # Inside a container's cgroup namespace the path may not exist under our mount: use the mount itself.
        while True:
            if here.is_dir():
                dirs.append(here)
            if here == base:
                break
            here = here.parent
    return dirs


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None
