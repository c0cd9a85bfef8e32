"""Worker count: CPUs available to the container (affinity and cgroup quota), CLI > config > auto."""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway import workers
from gateway.workers import available_cpus, cgroup_cpu_quota, resolve_workers, workers_from_env


def _cgroup(tmp_path: Path, own: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake cgroup mount plus /proc/self/cgroup naming ``own`` as our group."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / own.lstrip("/")).mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::{own}\n")
    return root, proc


def test_cgroup_v2_quota_is_read_from_cpu_max(tmp_path: Path) -> None:
    """cpu.max "150000 100000" means 1.5 CPUs."""
    root, proc = _cgroup(tmp_path, "/", {"cpu.max": "150000 100000\n"})
    assert cgroup_cpu_quota(root, proc) == pytest.approx(1.5)


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    """cpu.max "max 100000" is no limit at all."""
    root, proc = _cgroup(tmp_path, "/", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root, proc) is None


def test_a_parent_cgroup_limit_applies_when_ours_is_unlimited(tmp_path: Path) -> None:
    """A pod-level limit in a parent group bounds a container group that has none of its own."""
    root, proc = _cgroup(tmp_path, "/kubepods/pod1/ctr", {
        "kubepods/pod1/ctr/cpu.max": "max 100000", "kubepods/pod1/cpu.max": "200000 100000"})
    assert cgroup_cpu_quota(root, proc) == pytest.approx(2.0)


def test_cgroup_v1_quota_and_unlimited(tmp_path: Path) -> None:
    """cgroup v1: cfs_quota_us / cfs_period_us; a quota of -1 is no limit."""
    root, proc = _cgroup(tmp_path, "/", {"cpu,cpuacct/cpu.cfs_quota_us": "300000",
                                         "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    proc.write_text("4:cpu,cpuacct:/\n")
    assert cgroup_cpu_quota(root, proc) == pytest.approx(3.0)
    (root / "cpu,cpuacct/cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_quota(root, proc) is None


def test_available_cpus_is_the_smaller_of_affinity_and_floor_of_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 CPUs in the affinity mask but a 2.5-CPU quota: 2 workers; a 0.5-CPU quota still gives 1."""
    monkeypatch.setattr(workers, "affinity_cpus", lambda: 8)
    root, proc = _cgroup(tmp_path, "/", {"cpu.max": "250000 100000"})
    assert available_cpus(root, proc) == 2
    (root / "cpu.max").write_text("50000 100000")
    assert available_cpus(root, proc) == 1
    (root / "cpu.max").write_text("max 100000")
    assert available_cpus(root, proc) == 8
    monkeypatch.setattr(workers, "affinity_cpus", lambda: 3)
    (root / "cpu.max").write_text("800000 100000")
    assert available_cpus(root, proc) == 3


def test_no_cgroup_files_falls_back_to_affinity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside any cgroup mount (or on another OS) the affinity mask decides."""
    monkeypatch.setattr(workers, "affinity_cpus", lambda: 5)
    assert available_cpus(tmp_path / "nothing", tmp_path / "no-proc") == 5


def test_resolve_workers_prefers_cli_then_config_then_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers beats server.workers, which beats the detected CPU count; below 1 is an error."""
    monkeypatch.setattr(workers, "available_cpus", lambda: 6)
    assert resolve_workers(3, 2) == 3
    assert resolve_workers(None, 2) == 2
    assert resolve_workers(None, None) == 6
    with pytest.raises(ValueError):
        resolve_workers(0, None)


def test_workers_from_env() -> None:
    """GATEWAY_WORKERS set by the supervisor is read; missing or junk means 1."""
    assert workers_from_env({"GATEWAY_WORKERS": "4"}) == 4
    assert workers_from_env({}) == 1
    assert workers_from_env({"GATEWAY_WORKERS": "many"}) == 1
    assert workers_from_env({"GATEWAY_WORKERS": "0"}) == 1


def test_serve_refuses_zero_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway serve --workers 0` exits 2 with a config error instead of starting anything."""
    from gateway.cli import main

    config = tmp_path / "config.yaml"
    config.write_text("upstreams: {u: {base_url: 'http://127.0.0.1:9/v1'}}\nroutes: [{upstream: u}]\n")
    assert main(["serve", "--config", str(config), "--workers", "0"]) == 2
    assert "workers must be >= 1" in capsys.readouterr().err
