"""Turn measured figures into the markdown report: machine, versions, tables, targets."""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from bench.runner import Measured
from bench.scenarios import Scenario

Results = dict[str, dict[str, Measured]]


def machine_info() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {}
    for pkg in ("aiohttp", "uvloop", "orjson", "multidict", "yarl"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "-"
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "host": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": f"{cpu} x {os.cpu_count()}",
        "memory": _meminfo(),
        "load": " ".join(_read("/proc/loadavg").split()[:3]),
        "python": sys.version.split()[0],
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "wrk": _tool_version(["wrk", "-v"]),
        "nginx": _tool_version(["nginx", "-v"]),
        "commit": _tool_version(["git", "rev-parse", "--short", "HEAD"]),
    }


def built_policies(config: dict[str, Any]) -> list[str]:
    """The policy layers the gateway really builds for ``config`` (start-up only, no socket)."""
    code = (
        "import asyncio, json, sys\n"
        "from aiohttp import web\n"
        "from gateway.app import build_app\nfrom gateway.appstate import APP_STATE\n"
        "from gateway.config import parse_config\n"
        "async def main():\n"
        "    app = build_app(parse_config(json.loads(sys.argv[1]), {}))\n"
        "    runner = web.AppRunner(app)\n    await runner.setup()\n"
        "    print('POLICIES ' + json.dumps([getattr(p, 'name', type(p).__name__) "
        "for p in app[APP_STATE].runtime.policies]))\n"
        "    await runner.cleanup()\n"
        "asyncio.run(main())\n")
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True, text=True,
                         timeout=120, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("POLICIES "):
            return list(json.loads(line[9:]))
    return [
        f"(could not build: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})"
    ]


def _fmt(value: float | None, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{suffix}"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def scenario_table(scenario: Scenario, measured: dict[str, Measured]) -> list[str]:
    if scenario.kind == "idle":
        return _idle_table(measured)
    base = measured.get("static" if scenario.kind == "cache" else "direct")
    bare = measured.get("bare")
    head = (
        "| target | req/s | x direct | p50 ms | p99 ms | +p50 ms | +p99 ms "
        "| TTFT p50 | +TTFT p50 | +TTFT p99 | CPU ms/req | x bare CPU | RSS MB |"
    )
    if scenario.kind == "cache":
        head = (
            head.replace("x direct", "x static")
            .replace("+p50", "+p50 vs static")
            .replace("+p99", "+p99 vs static")
        )
        head += " hit ratio | in-gateway p50 ms (hit - healthz) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for target, m in measured.items():
        row = [
            target,
            _fmt(m.median("rps"), 0),
            _fmt(_ratio(m.median("rps"), base and base.median("rps")), 2),
            _fmt(m.median("p50_ms")),
            _fmt(m.median("p99_ms")),
            _fmt(_diff(m.median("p50_ms"), base and base.median("p50_ms"))),
            _fmt(_diff(m.median("p99_ms"), base and base.median("p99_ms"))),
            _fmt(m.median("ttft_p50_ms")),
            _fmt(_diff(m.median("ttft_p50_ms"), base and base.median("ttft_p50_ms"))),
            _fmt(_diff(m.median("ttft_p99_ms"), base and base.median("ttft_p99_ms"))),
            _fmt(m.median("cpu_ms_per_req")),
            _fmt(_ratio(m.median("cpu_ms_per_req"), bare and bare.median("cpu_ms_per_req")), 2),
            _fmt(m.median("rss_mb"), 1),
        ]
        if scenario.kind == "cache":
            health = measured.get(target.split(":")[0] + ":healthz")
            inside = (
                _diff(m.median("p50_ms"), health.median("p50_ms")) if health and health is not m else None
            )
            row += [_fmt(m.median("hit_ratio"), 2), _fmt(inside)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _idle_table(measured: dict[str, Measured]) -> list[str]:
    lines = [
        "| target | streams open | errors | RSS before MB | RSS with streams MB "
        "| KB per stream | MB per 1,000 |",
        "|---|---|---|---|---|---|---|",
    ]
    for target, m in measured.items():
        lines.append(
            "| "
            + " | ".join(
                [
                    target,
                    _fmt(m.median("opened"), 0),
                    _fmt(m.median("errors"), 0),
                    _fmt(m.median("rss_before_mb"), 1),
                    _fmt(m.median("rss_mb"), 1),
                    _fmt(m.median("kb_per_stream"), 1),
                    _fmt(m.median("mb_per_1000"), 1),
                ]
            )
            + " |"
        )
    return lines


def _get(results: Results, scenario: str, target: str, key: str) -> float | None:
    m = results.get(scenario, {}).get(target)
    return m.median(key) if m else None


# (label, goal, figure, limit, unit, at_least): met when figure <= limit (>= limit when at_least)
Check = tuple[str, str, Callable[[Results], float | None], float, str, bool]


def _cpu_vs_bare(scenario: str, target: str) -> Callable[[Results], float | None]:
    key = "cpu_ms_per_req"
    return lambda r: _ratio(_get(r, scenario, target, key), _get(r, scenario, "bare", key))


def _ttft_added(scenario: str, target: str, key: str) -> Callable[[Results], float | None]:
    return lambda r: _diff(_get(r, scenario, target, key), _get(r, scenario, "direct", key))


def _rps_vs(target: str, peer: str) -> Callable[[Results], float | None]:
    return lambda r: _ratio(_get(r, "small-c64", target, "rps"), _get(r, "small-c64", peer, "rps"))


_VARIANTS = (("default config", "gw-default", 1.3), ("all policies", "gw-all", 1.6))
_CORES = ("default config, one worker per core", "gw-default:cores", 1.3)  # `make run WORKERS=auto`
CHECKS: list[Check] = [
    *[(f"CPU/req vs bare relay, {label} ({c})", f"<= {limit}x", _cpu_vs_bare(f"small-{c}", target), limit,
       "x", False) for label, target, limit in (*_VARIANTS, _CORES) for c in ("c1", "c64")],
    ("req/s at c=64 vs Portkey, default config", ">= 2x", _rps_vs("gw-default", "portkey"), 2.0, "x", True),
    ("req/s at c=64 vs LiteLLM, default config", ">= 20x", _rps_vs("gw-default", "litellm"), 20.0, "x", True),
    *[(f"TTFT added p50 at c=1, {label}", "<= 0.5 ms", _ttft_added("stream-c1", target, "ttft_p50_ms"), 0.5,
       " ms", False) for label, target, _ in (*_VARIANTS, _CORES)],
    *[(f"TTFT added p99 at c=32, {label}", "<= 5 ms", _ttft_added("stream-c32", target, "ttft_p99_ms"), 5.0,
       " ms", False) for label, target, _ in _VARIANTS],
    *[(f"CPU per 20-chunk stream vs bare relay, {label} (c=1)", "<= 1.3x", _cpu_vs_bare("stream-c1", target),
       1.3, "x", False) for label, target, _ in _VARIANTS],
    (
        "RSS after warm-up, before the idle streams, default config",
        "<= 64 MB",
        lambda r: _get(r, "idle-1000", "gw-default", "rss_before_mb"),
        64.0,
        " MB",
        False,
    ),
    (
        "1,000 idle streams, default config",
        "<= 30 MB",
        lambda r: _get(r, "idle-1000", "gw-default", "mb_per_1000"),
        30.0,
        " MB",
        False,
    ),
    (
        "exact-cache hit inside the gateway, p50 (hit - /healthz on the same gateway)",
        "<= 0.3 ms",
        lambda r: _diff(
            _get(r, "cache-hit", "gw-all", "p50_ms"), _get(r, "cache-hit", "gw-all:healthz", "p50_ms")
        ),
        0.3,
        " ms",
        False,
    ),
]


def targets_table(results: Results) -> list[str]:
    lines = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for label, goal, get, limit, unit, at_least in CHECKS:
        value = get(results)
        if value is None:
            met = "n/a"
        elif at_least:
            met = "yes" if value >= limit else f"no (by {limit - value:.3g}{unit})"
        else:
            met = "yes" if value <= limit else f"no (by {value - limit:.3g}{unit})"
        lines.append(f"| {label} | {goal} | {_fmt(value, 3 if unit != ' MB' else 1, unit)} | {met} |")
    w1, w2 = _get(results, "workers", "gw-off:w1", "rps"), _get(results, "workers", "gw-off:w2", "rps")
    scale = _ratio(w2, w1)
    met = "n/a" if scale is None else ("yes" if scale >= 1.7 else f"no (by {1.7 - scale:.2f}x)")
    lines.append(f"| 2 workers vs 1 (req/s) | >= 1.7x | {_fmt(scale, 2, 'x')} | {met} |")
    return lines


def render(results: Results, scenarios: list[Scenario], info: dict[str, str], policies: dict[str, list[str]],
           notes: list[str], command: str, reps: int, duration: float) -> str:
    out = [
        f"# Benchmark {info['date']}",
        "",
        (
            f"Command: `{command}` ({reps} repetitions of {duration:g} s per "
            "target and scenario; figures are medians; every ratio compares targets of the same run)."
        ),
        "",
    ]
    out += [f"- **{k}**: {v}" for k, v in info.items()]
    out += [f"- **policies built** {name}: {', '.join(p) or '(none)'}" for name, p in policies.items()]
    out += [f"- note: {n}" for n in notes]
    out += [
        "",
        (
            "Targets: `direct` = the fake provider itself; `nginx` = nginx proxying to it; `static` = nginx "
            "answering a fixed completion; `bare` = bench/bare_relay.py; `portkey`, `litellm` = those "
            "gateways when installed (`make bench-peers`); `gw-off` = the gateway with every policy off; "
            "`gw-default` = the config `make run` serves, at one worker as `make run` starts it; "
            "`gw-default:cores` = the same as `make run WORKERS=auto` starts it, one worker per core sharing "
            "state through the supervisor's host Redis; "
            "`gw+<policy>` = that policy alone on; "
            "`gw-all` = every policy on. `+` columns are added to `direct` (cache: to `static`)."
        ),
        "",
        "## Targets",
        "",
    ] + targets_table(results)
    for scenario in scenarios:
        if scenario.name in results:
            out += ["", f"## {scenario.title}", ""] + scenario_table(scenario, results[scenario.name])
    return "\n".join(out) + "\n"


def to_json(results: Results) -> dict[str, Any]:
    return {s: {t: {"reps": m.reps, "median": {k: m.median(k) for k in (m.reps[0] if m.reps else {})
                                               if isinstance(m.reps[0][k], (int, float))}}
                for t, m in targets.items()} for s, targets in results.items()}


def _meminfo() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1e6:.1f} GB"
    return "-"


def _tool_version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None and not os.path.exists(f"/usr/sbin/{argv[0]}"):
        return "not installed"
    try:
        out = subprocess.run(argv if shutil.which(argv[0]) else [f"/usr/sbin/{argv[0]}", *argv[1:]],
                             capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "-"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
