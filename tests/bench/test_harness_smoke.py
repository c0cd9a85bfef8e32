"""The benchmark harness runs end to end on a tiny scenario (a behavioural check, never a measurement)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_overhead_runs_a_tiny_scenario_and_writes_parsable_results(tmp_path: Path) -> None:
    """`python -m bench.overhead --quick` on one scenario starts the mock and a gateway, and reports both."""
    out_md, out_json = tmp_path / "bench.md", tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.overhead",
            "--quick",
            "--only",
            "small-c1",
            "--targets",
            "direct,gw-off",
            "--loadgen",
            "asyncio",
            "--no-nginx",
            "--out",
            str(out_md),
            "--json",
            str(out_json),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(out_json.read_text())["small-c1"]
    for target in ("direct", "gw-off"):
        median = figures[target]["median"]
        assert median["requests"] > 0 and median["errors"] == 0
        assert median["p50_ms"] > 0 and median["cpu_ms_per_req"] > 0
    report = out_md.read_text()
    assert "## Targets" in report and "| gw-off |" in report and "| direct |" in report
