"""Issue #21: how much cheaper is a lean data path than aiohttp, server half and client half separately?

Measures ``bench.lean_relay`` in its four combinations (``lean-<server><client>``: ``r`` raw protocol,
``a`` aiohttp; ``lean-aa`` is the bare relay's code shape behind the lean relay's adapters) against
``direct`` (the mock itself) and ``bare`` (``bench/bare_relay.py``), in the same run, with the harness of
``bench.overhead`` (rotated order per repetition, CPU from ``/proc``): CPU ms per request at c=1 and
c=64 (non-stream small chat), TTFT added p50/p99 at c=1 and c=32 and CPU per 20-chunk stream (stream
scenarios), and RSS of 1,000 idle streams (a fresh server each). ``--runs N`` repeats the whole set;
each run gets its own table, and ratios are taken within a run (the machine is shared).

    python -m bench.lean_bench --runs 3 --out bench/results/lean.md
    python -m bench.lean_bench --quick                 # smoke: one short repetition, 50 idle streams

httptools is no dependency; to add ``lean-hr`` (raw server, httptools request parser) and ``lean-hs``
(``bench.lean_splice``), install it apart and name its site-packages:

    python -m venv /tmp/lean-venv && /tmp/lean-venv/bin/pip install httptools
    python -m bench.lean_bench --runs 3 --httptools-path /tmp/lean-venv/lib/python3.11/site-packages

Results and conclusions: ``bench/results/2026-12-06-lean-relay.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import procs, report, runner
from bench.runner import Env, Measured, _progress, run_scenario
from bench.scenarios import CHAT_PATH, Scenario, all_scenarios

LEAN = {"lean-rr": ("raw", "raw"), "lean-ra": ("raw", "aiohttp"), "lean-ar": ("aiohttp", "raw"),
        "lean-aa": ("aiohttp", "aiohttp"), "lean-hr": ("raw", "raw"), "lean-hs": ("splice", "raw")}
# lean-hr: httptools parses the requests; lean-hs: bench.lean_splice (httptools callbacks both ways)
HTTPTOOLS_PATH: list[str] = []  # --httptools-path: where httptools is installed (it is no dependency)
TARGETS = ("direct", "bare", "lean-rr", "lean-ra", "lean-ar", "lean-aa")
SCENARIOS = ("small-c1", "small-c64", "stream-c1", "stream-c32")


class LeanEnv(Env):
    def resolve(self, target: str) -> tuple[procs.Server, str, str] | None:
        if target in LEAN:
            if target not in self.servers:
                self.servers[target] = start(self, target)
            return self.servers[target], self.servers[target].url + CHAT_PATH, "POST"
        return super().resolve(target)


def start(env: Env, target: str) -> procs.Server:
    if target == "bare":
        return procs.start_bare(env.mock.url)
    server, client = LEAN[target]
    if target in ("lean-hr", "lean-hs"):
        return procs.start_lean(env.mock.url, server, client, name=target, parser="httptools",
                                extra_path=HTTPTOOLS_PATH[0])
    return procs.start_lean(env.mock.url, server, client, name=target)


def run_idle(env: Env, scenario: Scenario, targets: tuple[str, ...]) -> dict[str, Measured]:
    """RSS of ``idle_streams`` open streams, as ``bench.runner.run_idle`` measures it, bare and lean."""
    return runner.run_idle(env, replace(scenario, targets=targets), start=start)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}x"


def render_run(index: int, results: dict[str, dict[str, Measured]], targets: tuple[str, ...]) -> str:
    """One run's figures: a row per target, CPU as ms and as a ratio to bare, TTFT as added to direct."""
    def med(scenario: str, target: str, key: str) -> float | None:
        m = results.get(scenario, {}).get(target)
        return m.median(key) if m else None

    lines = [f"### Run {index}", "",
             "| target | CPU ms/req c=1 | vs bare | CPU ms/req c=64 | vs bare | req/s c=64 "
             "| TTFT added p50 / p99 c=1 (ms) | TTFT added p50 / p99 c=32 (ms) | CPU ms/stream c=1 | vs bare "
             "| CPU ms/stream c=32 | vs bare | 1,000 idle streams (MB) | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in targets:
        row = [t]
        for sc in ("small-c1", "small-c64"):
            row += [_fmt(med(sc, t, "cpu_ms_per_req")), _ratio(med(sc, t, "cpu_ms_per_req"),
                                                              med(sc, "bare", "cpu_ms_per_req"))]
        row.append(_fmt(med("small-c64", t, "rps"), ".0f"))
        for sc in ("stream-c1", "stream-c32"):
            cells = []
            for key in ("ttft_p50_ms", "ttft_p99_ms"):
                v, d = med(sc, t, key), med(sc, "direct", key)
                cells.append("-" if v is None or d is None else f"{v - d:+.2f}")
            row.append(" / ".join(cells))
        for sc in ("stream-c1", "stream-c32"):
            row += [_fmt(med(sc, t, "cpu_ms_per_req")), _ratio(med(sc, t, "cpu_ms_per_req"),
                                                              med(sc, "bare", "cpu_ms_per_req"))]
        row.append(_fmt(med("idle-1000", t, "added_mb"), ".1f"))
        errors = sum(int(r.get("errors") or 0) for sc in results.values() if t in sc for r in sc[t].reps)
        row.append(str(errors))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lean_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs, each with its own servers and table")
    p.add_argument("--reps", type=int, default=3, help="repetitions per target within a run (median)")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--idle-streams", type=int, default=1000)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--only", default=",".join((*SCENARIOS, "idle-1000")))
    p.add_argument("--httptools-path", metavar="DIR",
                   help="site-packages with httptools: adds lean-hr and lean-hs (httptools parsers)")
    p.add_argument("--quick", action="store_true", help="one 1-second repetition, 50 idle streams (smoke)")
    p.add_argument("--out", help="markdown file for the tables (default: print only)")
    p.add_argument("--json", help="raw figures of every run as JSON")
    args = p.parse_args(argv)
    targets = tuple(args.targets.split(","))
    if args.httptools_path:
        HTTPTOOLS_PATH.append(args.httptools_path)
        targets = (*targets, *(t for t in ("lean-hr", "lean-hs") if t not in targets))
    wanted = set(args.only.split(","))
    reps, duration, idle = (1, 1.0, 50) if args.quick else (args.reps, args.duration, args.idle_streams)
    by_name = {s.name: s for s in all_scenarios()}
    info = report.machine_info()
    command = "python -m bench.lean_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    text = [f"Command: `{command.strip()}`; {reps} repetitions of {duration:g} s per target and run.", "",
            f"Machine: {json.dumps(info)}", ""]
    raw: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):
        env = LeanEnv(loadgen="asyncio", use_nginx=False, duration_s=duration, reps=reps)
        results: dict[str, dict[str, Measured]] = {}
        try:
            for name in SCENARIOS:
                if name in wanted:
                    scenario = replace(by_name[name], targets=targets)
                    _progress(f"== run {run}: {name}")
                    results[name] = run_scenario(env, scenario)
            if "idle-1000" in wanted:
                scenario = replace(by_name["idle-1000"], idle_streams=idle)
                _progress(f"== run {run}: idle-{idle}")
                results["idle-1000"] = run_idle(env, scenario, tuple(t for t in targets if t != "direct"))
        finally:
            env.stop()
        table = render_run(run, results, targets)
        print(table, flush=True)
        text.append(table)
        raw.append({sc: {t: m.reps for t, m in ms.items()} for sc, ms in results.items()})
        if args.out:
            Path(args.out).write_text("\n".join(text))
        if args.json:
            Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
