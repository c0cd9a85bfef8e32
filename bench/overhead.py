"""``make bench``: what the gateway adds, measured side by side with the provider, nginx and a bare relay.

Starts the fake provider (``gateway mock-upstream``), nginx when installed, the
bare aiohttp relay and the gateway variants as separate processes, runs every
scenario (``bench.scenarios``) against each target a few times, and writes the
medians to ``bench/results/<date>.md`` (and prints them): requests/s and its
ratio to the provider alone, added latency p50/p99, TTFT added for streams,
CPU ms per request from ``/proc`` and its ratio to the bare relay, RSS, and the
issue's targets with how far each is from being met.

    python -m bench.overhead                      # everything, ~10 minutes
    python -m bench.overhead --only small-c1,stream-c1 --reps 5
    python -m bench.overhead --quick              # one short repetition (smoke)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import replace
from pathlib import Path

from bench import report
from bench.runner import Env, run_scenario
from bench.scenarios import GATEWAYS, all_scenarios, gateway_config

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated scenario names (default: all)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per target (median reported)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (streams scale it)")
    p.add_argument("--targets", help="comma-separated targets to keep in every scenario (default: all)")
    p.add_argument("--loadgen", choices=("auto", "wrk", "asyncio"), default="auto",
                   help="auto: wrk for plain requests when installed, else the asyncio client")
    p.add_argument(
        "--no-nginx", action="store_true", help="skip the nginx columns even when nginx is installed"
    )
    p.add_argument(
        "--quick", action="store_true", help="one 1-second repetition (a smoke run, not a measurement)"
    )
    p.add_argument("--out", help="markdown report path (default: bench/results/<date>.md)")
    p.add_argument("--json", help="also write the raw figures as JSON here")
    p.add_argument(
        "--baseline",
        metavar="TREE",
        help="also run gw-off, gw-default and gw-all from this source tree (a baseline checkout) as "
        "gw-off@base, gw-default@base and gw-all@base, in the same run",
    )
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    scenarios = all_scenarios()
    if args.list:
        for s in scenarios:
            print(f"{s.name:12} {s.title}  targets: {', '.join(s.targets)}")
        return 0
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in scenarios}
        if unknown:
            print(f"unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        scenarios = [s for s in scenarios if s.name in wanted]
    if args.baseline:
        extra = ("gw-off@base", "gw-default@base", "gw-all@base")
        scenarios = [replace(s, targets=s.targets + extra) if s.kind in ("requests", "streams") and
                     s.name != "policies" else s for s in scenarios]
    if args.targets:
        keep = set(args.targets.split(","))
        scenarios = [replace(s, targets=tuple(t for t in s.targets if t in keep)) for s in scenarios]
        scenarios = [s for s in scenarios if s.targets]
    reps, duration = (1, 1.0) if args.quick else (args.reps, args.duration)
    env = Env(loadgen=args.loadgen, use_nginx=not args.no_nginx, duration_s=duration, reps=reps,
              baseline=args.baseline)
    info = report.machine_info()
    used = {t.split(":")[0] for s in scenarios for t in s.targets}
    policies = {name: report.built_policies(gateway_config("http://127.0.0.1:9/v1", GATEWAYS[name]))
                for name in ("gw-off", "gw-default", "gw-all") if name in used}
    results: report.Results = {}
    try:
        for scenario in scenarios:
            print(f"== {scenario.name}: {scenario.title}", file=sys.stderr, flush=True)
            results[scenario.name] = run_scenario(env, scenario)
    finally:
        env.stop()
    command = "python -m bench.overhead " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report.render(results, scenarios, info, policies, env.notes, command.strip(), reps, duration)
    out = Path(args.out) if args.out else RESULTS_DIR / f"{dt.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(results), indent=1))
    print(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
