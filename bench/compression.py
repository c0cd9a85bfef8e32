"""Compression benchmark: tokens saved, facts kept, prefix stability, time per request.

Runs ``gateway.compress`` over the evaluation set in ``tests/data/transcripts``
(made by ``scripts/make_transcripts.py``): three conversations, each cut at
about 8k, 32k and 128k tokens.

* **Fit**: each checkpoint compressed to 75% and to 50% of its size: tokens
  saved, the facts the next answer needs still present (exact strings), and
  the time of one ``compress`` call, *cold* (as the first request of a
  conversation: the original strings were counted by the request's prompt
  count, as in the gateway, but nothing derived from them) and *warm* (the
  steady state of an agent loop: the previous request was compressed the same
  way, so only new strings are counted).
* **Prefix stability**: the conversation replayed request by request (one
  request per model call) against a fixed budget; for each pair of consecutive
  compressed requests, whether the earlier prompt is an exact prefix of the
  later one (a full provider prompt-cache hit), and the share of the later
  prompt's tokens in the common prefix; with and without ``stable_prefix``.

"Cached share" is what a provider's prompt cache can reuse (it caches by
exact prefix); "earlier prompt is a prefix" is the strict all-or-nothing view.

Run: ``python -m bench.compression [--repeat 5] [--budget 24000] [--out FILE]``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.tokens.tokenizer import Tokenizer
from policies.compression.engine import Plan, compress
from policies.compression.meter import tokenizer_meter

ROOT = Path(__file__).resolve().parents[1]
TRANSCRIPTS = ROOT / "tests" / "data" / "transcripts"
KINDS = ("react_orders", "coding_agent", "long_chat")


def load(kind: str) -> dict[str, Any]:
    return json.loads(gzip.decompress((TRANSCRIPTS / f"{kind}.json.gz").read_bytes()))


def text_of(messages: Sequence[dict[str, Any]]) -> str:
    parts = []
    for m in messages:
        content = m.get("content")
        parts.append(content if isinstance(content, str) else json.dumps(content))
        parts += [c["function"]["arguments"] for c in m.get("tool_calls") or []]
    return "\n".join(parts)


def timed(
    tokenizer: Tokenizer, model: str, messages: list[dict[str, Any]], plan: Plan
) -> tuple[Any, float, float]:
    """One compress call: (outcome, wall ms, CPU ms of this thread; the latter ignores other processes)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    outcome = compress(messages, plan, tokenizer_meter(tokenizer, model))
    return outcome, (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000


def fit_row(data: dict[str, Any], checkpoint: dict[str, Any], ratio: float, repeat: int) -> dict[str, Any]:
    model, messages = data["model"], data["messages"][: checkpoint["upto"]]
    plan = Plan(budget=int(checkpoint["tokens"] * ratio))
    cold: list[tuple[float, float]] = []
    warm: list[tuple[float, float]] = []
    outcome = None
    for _ in range(repeat):
        tokenizer = Tokenizer()
        tokenizer.preload(["o200k_base"])
        tokenizer.count_messages(model, messages)  # what prompt_tokens() did before compression ran
        outcome, wall, cpu = timed(tokenizer, model, messages, plan)
        cold.append((wall, cpu))
        warm.append(min(timed(tokenizer, model, messages, plan)[1:] for _ in range(3)))
    assert outcome is not None
    blob = text_of(outcome.messages)
    kept = [f for f in checkpoint["facts"] if f in blob]
    return {
        "kind": data["kind"],
        "size": checkpoint["name"],
        "before": outcome.before,
        "after": outcome.after,
        "fits": outcome.fits,
        "saved_pct": 100 * (outcome.before - outcome.after) / outcome.before,
        "facts": f"{len(kept)}/{len(checkpoint['facts'])}",
        "missing": sorted(set(checkpoint["facts"]) - set(kept)),
        "steps": ",".join(outcome.saved),
        "cold": _medians(cold),
        "warm": _medians(warm),
    }


def _medians(samples: list[tuple[float, float]]) -> str:
    return f"{statistics.median(w for w, _ in samples):.2f} / {statistics.median(c for _, c in samples):.2f}"


def request_points(messages: Sequence[dict[str, Any]]) -> list[int]:
    """Prefix lengths at which a model call is due (after a tool result or a user message)."""
    return [
        i
        for i in range(3, len(messages) + 1)
        if messages[i - 1]["role"] in ("tool", "user")
        and (i == len(messages) or messages[i]["role"] != "tool")
    ]


def stability(data: dict[str, Any], budget: int, stable: bool, tokenizer: Tokenizer) -> dict[str, Any]:
    model, messages = data["model"], data["messages"]
    plan = Plan(budget=budget, stable_prefix=stable)
    previous: Sequence[dict[str, Any]] | None = None
    pairs = hits = 0
    shares: list[float] = []
    for k in request_points(messages):
        meter = tokenizer_meter(tokenizer, model)
        outcome = compress(messages[:k], plan, meter)
        if not outcome.changed:
            previous = None
            continue
        out = outcome.messages
        if previous is not None:
            common = 0
            while common < min(len(previous), len(out)) and previous[common] == out[common]:
                common += 1
            pairs += 1
            hits += common == len(previous)
            shares.append(meter.total(out[:common]) / outcome.after)
        previous = out
    return {"kind": data["kind"], "stable_prefix": stable, "pairs": pairs, "full_prefix_hits": hits,
            "hit_pct": 100 * hits / pairs if pairs else 0.0,
            "cached_share_pct": 100 * statistics.mean(shares) if shares else 0.0}


def report(data: dict[str, dict[str, Any]], repeat: int, budget: int) -> list[str]:
    load1, _, _ = os.getloadavg()
    lines = [(f"# Compression benchmark ({platform.python_implementation()} {platform.python_version()}, "
             f"{os.cpu_count()} CPUs, load average {load1:.1f} at start)"), "",
             "## Fit (budget = 75% / 50% of the conversation; one compress call, median ms wall / CPU)", "",
             "| transcript | size | tokens | budget | after | saved | facts kept | steps | cold | warm |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for ratio in (0.75, 0.5):
        for kind, d in data.items():
            for cp in d["checkpoints"]:
                r = fit_row(d, cp, ratio, repeat)
                fits = "" if r["fits"] else " (REJECTED)"
                missing = f" missing {r['missing']}" if r["missing"] else ""
                lines.append(
                    f"| {kind} | {r['size']} | {r['before']} | {int(ratio * 100)}% | {r['after']}{fits} | "
                    f"{r['saved_pct']:.0f}% | {r['facts']}{missing} | {r['steps']} | "
                    f"{r['cold']} | {r['warm']} |"
                )
    lines += [
        "",
        f"## Prefix stability (replay request by request, budget {budget} tokens)",
        "",
        "| transcript | stable_prefix | compressed pairs | earlier prompt is a prefix "
        "| cached share of prompt |",
        "|---|---|---|---|---|",
    ]
    tokenizer = Tokenizer()
    for kind, d in data.items():
        for stable in (True, False):
            r = stability(d, budget, stable, tokenizer)
            lines.append(
                f"| {kind} | {stable} | {r['pairs']} | {r['full_prefix_hits']} ({r['hit_pct']:.0f}%) | "
                f"{r['cached_share_pct']:.0f}% |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description="compression benchmark")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--budget", type=int, default=24_000, help="prompt budget of the prefix-stability replay"
    )
    parser.add_argument("--out", type=Path, help="also write the markdown report to this file")
    args = parser.parse_args()
    text = "\n".join(report({kind: load(kind) for kind in KINDS}, args.repeat, args.budget)) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
