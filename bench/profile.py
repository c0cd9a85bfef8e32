"""Profile the gateway's hot path under load with py-spy and summarise it as text.

Starts the fake provider and one gateway variant, drives it with the bench load
generator, samples the gateway process with ``py-spy record`` (raw collapsed
stacks), and prints where the time goes: the functions with the most samples on
the stack (inclusive) and at the top of it (self), grouped by file. The text is
what goes into ``bench/results/profile-<date>.md``; the collapsed stacks can be
turned into a flame graph with any flamegraph tool.

    python -m bench.profile --variant gw-all --scenario small-c64 --seconds 15
"""
from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench import loadgen, procs
from bench.loadgen import LoadSpec
from bench.scenarios import CHAT_PATH, GATEWAYS, all_scenarios, gateway_config

CORE_FILES = (
    "gateway/handler.py",
    "gateway/upstream.py",
    "gateway/sse.py",
    "gateway/request.py",
    "gateway/request_json.py",
    "gateway/request_schema.py",
    "gateway/decode.py",
    "gateway/auth.py",
    "gateway/routing.py",
    "gateway/chain.py",
    "gateway/server.py",
    "gateway/exchange.py",
    "gateway/usage.py",
    "gateway/errors.py",
)
_POLICY_PARTS = (
    "policies/",
    "gateway/cache/",
    "gateway/resilience/",
    "gateway/ratelimit/",
    "gateway/compress/",
    "gateway/tokens",
    "tiktoken/",
    "gateway/tokencount",
)


def owner(path: str) -> str:
    """Who a frame's self time belongs to: the core, a policy, a sink,
    or the libraries the bare relay uses too."""
    if path.endswith(CORE_FILES):
        return "core (handler, upstream, sse, request, auth, routing, exchange, usage)"
    if "telemetry/logging" in path or path.startswith("logging/"):
        return "the request log line (logging)"
    if "telemetry/" in path or "ledger/" in path or path.startswith("prometheus_client"):
        return "telemetry sinks (metrics, live stats, accounting, ledger)"
    if any(part in path for part in _POLICY_PARTS):
        return "policies (and their tokenizer)"
    if path.startswith(("aiohttp/", "multidict/", "yarl/")):
        return "aiohttp (what the bare relay runs too)"
    if path.startswith("asyncio/"):
        return "asyncio / uvloop"
    return "other"


def summarise(collapsed: str, top: int = 30) -> str:
    """Inclusive and self sample shares per function from py-spy's raw (collapsed) output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    by_owner: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
        by_file[_file_of(stack.split(";")[-1])] += count
        by_owner[owner(_file_of(stack.split(";")[-1]))] += count
    if not total:
        return "(no samples)"
    out = [f"samples: {total}", "", "self time by owner:"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in by_owner.most_common()]
    out += ["", "inclusive (on the stack):"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    out += ["", "self (top of the stack):"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    out += ["", "self by file:"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in by_file.most_common(15)]
    return "\n".join(out)


def main_summarise(path: str) -> None:
    """``python -m bench.profile --summarise STACKS``: re-read saved collapsed stacks."""
    print(summarise(Path(path).read_text()))


def _short(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({_trim(path)})"


def _file_of(frame: str) -> str:
    _, _, where = frame.partition(" (")
    return _trim(where.rstrip(")").rsplit(":", 1)[0])


def _trim(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def main() -> int:
    scenarios = {s.name: s for s in all_scenarios()}
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="gw-all", choices=sorted(GATEWAYS))
    p.add_argument("--scenario", default="small-c64", choices=[n for n, s in scenarios.items()
                                                               if s.kind in ("requests", "streams", "cache")])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", help="write the collapsed stacks here")
    p.add_argument("--tree", help="run the gateway from this source tree (a baseline checkout)")
    p.add_argument("--summarise", metavar="STACKS", help="only summarise saved collapsed stacks and exit")
    args = p.parse_args()
    if args.summarise:
        main_summarise(args.summarise)
        return 0
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    scenario = scenarios[args.scenario]
    mock = procs.start_mock()
    gw = procs.start_gateway(args.variant, gateway_config(mock.url + "/v1", GATEWAYS[args.variant]), 1,
                             source_tree=args.tree)
    try:
        spec = LoadSpec(url=gw.url + CHAT_PATH, body=scenario.body, headers=scenario.headers,
                        concurrency=scenario.concurrency, duration_s=args.seconds + 2, stream=scenario.stream,
                        unique=scenario.unique)
        load = threading.Thread(target=loadgen.run, args=(spec,), daemon=True)
        load.start()
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(args.out or Path(tmp) / "stacks.txt")
            subprocess.run(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(gw.pid),
                    "--duration",
                    str(int(args.seconds)),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--nonblocking",
                ],
                check=True,
                capture_output=True,
            )
            load.join()
            tree = f" (code from {args.tree})" if args.tree else ""
            print(f"# {args.variant}{tree}, {scenario.title}, {args.seconds:g} s at {args.rate} Hz")
            print(summarise(raw.read_text()))
    finally:
        gw.stop()
        mock.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
