"""Generate the compression evaluation set under tests/data/transcripts/.

Three synthetic but realistically shaped conversations, each grown to about
130k tokens (o200k_base), with checkpoints at about 8k, 32k and 128k tokens.
A checkpoint is a prefix of the conversation where the next model answer is
due (after a tool result, or after a user message) and lists the facts that
answer needs, as exact strings that must still be in the compressed prompt:

* ``react_orders``: a ReAct loop auditing orders through a JSON API: big
  search pages (the pagination cursor is at the end), order and shipment
  records, a repeated lookup (identical output), a running tally in the thoughts;
* ``coding_agent``: a coding agent fixing failing tests: file reads, pytest
  runs whose verdict is at the end, greps, patches, re-reads of unchanged files;
* ``long_chat``: a long trip-planning chat with long answers, constraints in
  the first message, details given along the way and periodic recaps.

The generator is seeded: running it again writes identical files.
Usage: ``python scripts/make_transcripts.py [--out DIR]``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.tokens.tokenizer import Tokenizer

MODEL = "gpt-4o"
SIZES = {"8k": 8_000, "32k": 32_000, "128k": 128_000}
Step = tuple[list[dict[str, Any]], list[str]]  # messages added, facts the next answer needs


class Calls:
    """Makes assistant tool-call messages and their tool answers with stable ids."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.n = prefix, 0

    def __call__(self, thought: str, name: str, args: dict[str, Any], output: str) -> list[dict[str, Any]]:
        self.n += 1
        cid = f"call_{self.prefix}{self.n:04d}"
        call = {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        return [{"role": "assistant", "content": thought, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": cid, "content": output}]


# --- ReAct loop over a JSON API -----------------------------------------------------------------

REACT_SYSTEM = """You are OrderAudit, an agent that audits e-commerce orders with the tools below.

Rules:
- Flag an order when its shipment is late by more than 5 days.
- Report money amounts in EUR with two decimals.
- Never contact customers; only report.

Think step by step,   then call exactly one tool.    Wait for its result before the next step.

Rules:
- Flag an order when its shipment is late by more than 5 days.
- Report money amounts in EUR with two decimals.
- Never contact customers; only report."""
REACT_TASK = ("Audit every order of customer CUST-4821 placed in March 2024. List each delayed order with "
              "its carrier tracking number and how many days late it is.")
CITIES = ["Lyon", "Porto", "Ghent", "Graz", "Turku", "Bari", "Cork", "Brno", "Split", "Malmo"]
ITEMS = ["desk lamp", "usb-c hub", "standing mat", "monitor arm", "webcam", "headset", "keyboard", "cable kit"]


def _order(rng: random.Random, oid: str) -> dict[str, Any]:
    lines = [{"sku": f"SKU-{rng.randint(10000, 99999)}", "name": rng.choice(ITEMS), "qty": rng.randint(1, 4),
              "unit_price": round(rng.uniform(5, 300), 2), "tax_rate": 0.2, "warehouse": f"WH-{rng.randint(1, 9)}"}
             for _ in range(rng.randint(20, 40))]
    city = rng.choice(CITIES)
    address = {"line1": f"{rng.randint(1, 200)} Rue {rng.choice(CITIES)}", "city": city,
               "postcode": str(rng.randint(10000, 99999)), "country": "EU"}
    return {"id": oid, "shipment_id": f"SHP-{rng.randint(100000, 999999)}", "customer_id": "CUST-4821",
            "placed_at": f"2024-03-{rng.randint(1, 31):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
            "status": rng.choice(["shipped", "delivered", "in_transit"]), "currency": "EUR",
            "total": round(sum(x["qty"] * x["unit_price"] for x in lines), 2), "lines": lines,
            "shipping_address": address, "billing_address": address,
            "audit_log": [{"at": f"2024-03-{rng.randint(1, 31):02d}", "actor": f"svc-{rng.randint(1, 40)}",
                           "action": rng.choice(["created", "paid", "picked", "packed", "label_printed"])}
                          for _ in range(rng.randint(20, 40))]}


def _shipment(rng: random.Random, sid: str, oid: str, late: int) -> dict[str, Any]:
    return {"shipment_id": sid, "order_id": oid, "carrier": rng.choice(["DHL", "UPS", "GLS", "DPD"]),
            "tracking_number": f"1Z{rng.randint(10**9, 10**10 - 1)}", "delay_days": late,
            "promised_date": f"2024-03-{rng.randint(10, 28):02d}",
            "events": [{"at": f"2024-03-{rng.randint(1, 31):02d}T{rng.randint(0, 23):02d}:00Z",
                        "where": rng.choice(CITIES), "code": rng.choice(["ARR", "DEP", "SCN", "HLD"])}
                       for _ in range(rng.randint(12, 30))]}


def react_orders(rng: random.Random) -> Iterator[Step]:
    call, flagged, fetched = Calls("ord"), [], []
    cursor, page = "", 0
    base = ["CUST-4821", "more than 5 days"]
    while True:
        page += 1
        ids = [f"ORD-{rng.randint(100000, 999999)}" for _ in range(50)]
        nxt = f"cur_{rng.getrandbits(48):012x}"
        listing = {"page": page, "orders": [{"id": i, "placed_at": f"2024-03-{rng.randint(1, 31):02d}",
                                             "total": round(rng.uniform(20, 900), 2), "status": "shipped"}
                                            for i in ids], "next_cursor": nxt}
        yield call(f"Fetching page {page} of the order list.", "search_orders",
                   {"customer": "CUST-4821", "cursor": cursor}, json.dumps(listing, indent=2)), [*base, nxt]
        cursor = nxt
        for oid in ids[: rng.randint(3, 5)]:
            order = _order(rng, oid)
            out = json.dumps(order, indent=2)
            fetched.append((oid, out))
            yield call(f"Looking up {oid}.", "get_order", {"id": oid}, out), [*base, order["shipment_id"],
                                                                              *flagged[:1]]
            late = rng.choice([0, 0, 1, 2, 6, 9, 12])
            ship = _shipment(rng, order["shipment_id"], oid, late)
            if late > 5:
                flagged.append(oid)
            tally = f"Flagged so far ({len(flagged)}): {', '.join(flagged) or 'none'}."
            yield call(f"Checking the shipment of {oid}. {tally}", "get_shipment", {"id": order["shipment_id"]},
                       json.dumps(ship, indent=2)), [*base, ship["tracking_number"], f'"delay_days": {late}',
                                                     *flagged[:1]]
            if len(fetched) % 7 == 0:  # the agent re-checks an earlier order: identical output
                again_id, again = fetched[len(fetched) // 2]
                yield call(f"Re-checking {again_id} to confirm its total. {tally}", "get_order", {"id": again_id},
                           again), [*base, again_id, *flagged[:1]]


# --- coding agent -------------------------------------------------------------------------------

CODE_SYSTEM = """You are CodeFixer, an autonomous coding agent working in a Python repository.

Rules:
- Run the tests with `pytest -q` after every change.
- Make minimal changes and never edit the tests.
- Edit files only with apply_patch (unified diffs)."""
CODE_TASK = ("CI is red since the leap-year change: tests in tests/test_billing.py fail. Make the whole suite "
             "pass without editing any test.")
WORDS = ["amount", "period", "start", "end", "rate", "invoice", "customer", "plan", "days", "total", "tax", "fee"]


def _source(rng: random.Random, module: str, n_funcs: int) -> tuple[str, list[str]]:
    lines = [f'"""{module}: billing helpers."""', "from __future__ import annotations", "",
             "from datetime import date", "from decimal import Decimal", ""]
    sigs = []
    for _ in range(n_funcs):
        name = "_".join(rng.sample(WORDS, 2)) + f"_{rng.randint(1, 99)}"
        args = ", ".join(f"{w}: Decimal" for w in rng.sample(WORDS, rng.randint(1, 3)))
        sig = f"def {name}({args}) -> Decimal:"
        sigs.append(sig)
        lines += [sig, f'    """Return the {rng.choice(WORDS)} for one {rng.choice(WORDS)}."""']
        for _ in range(rng.randint(6, 14)):
            a, b = rng.sample(WORDS, 2)
            lines.append(f"    {a} = {b} * Decimal('{rng.randint(1, 99)}.{rng.randint(0, 99):02d}')")
            if rng.random() < 0.3:
                lines += [f"    if {a} > {b}:", f"        {a} = {b}"]
        lines += [f"    return {rng.choice(WORDS)}", "", ""]
    return "\n".join(f"{i + 1:4d} | {line}" for i, line in enumerate(lines)), sigs


def _pytest(rng: random.Random, failing: list[str], passed: int) -> str:
    out = [f"tests/test_{w}.py " + "".join(rng.choice("....") for _ in range(rng.randint(20, 60)))
           for w in rng.sample(WORDS, 10)]
    out.append("=" * 30 + " FAILURES " + "=" * 30)
    for test in failing[:2]:
        out += [f"____ {test} ____", "", "    def " + test + "():"]
        call = (f"prorate(Decimal('{rng.randint(10, 99)}.00'), date(2024, 2, {rng.randint(1, 28)}), "
                f"date(2024, 3, 1))")
        out.append(f">       assert {call} == Decimal('{rng.randint(10, 99)}.00')")
        out += [f"tests/test_billing.py:{rng.randint(10, 400)}: in {test}" for _ in range(rng.randint(8, 20))]
        out.append(f"E       AssertionError: assert Decimal('28.00') == Decimal('{rng.randint(29, 31)}.00')")
    out.append("=" * 20 + " short test summary info " + "=" * 20)
    out += [f"FAILED tests/test_billing.py::{t} - AssertionError" for t in failing]
    out.append(f"{len(failing)} failed, {passed} passed in {rng.uniform(3, 9):.2f}s")
    return "\n".join(out)


def coding_agent(rng: random.Random) -> Iterator[Step]:
    call = Calls("code")
    failing = [f"test_prorate_{w}_{i}" for i, w in enumerate(rng.choices(WORDS, k=25))]
    files = {f"billing/{w}.py": _source(rng, w, rng.randint(8, 22)) for w in WORDS}
    base, fixed, passed = ["tests/test_billing.py", "pytest -q"], [], 400
    while failing:
        report = _pytest(rng, failing, passed)
        summary = f"{len(failing)} failed, {passed} passed"
        yield call(f"Running the tests. Fixed so far: {', '.join(fixed) or 'none'}.", "run_tests", {"args": "-q"},
                   report), [*base, failing[0], summary, *fixed[:1]]
        for path in rng.sample(sorted(files), 2):
            text, sigs = files[path]
            sig = rng.choice(sigs)
            yield call(f"Reading {path} to find `{sig[4:sig.index('(')]}`.", "read_file", {"path": path},
                       f"{path} ({text.count(chr(10)) + 1} lines)\n{text}"), [*base, sig, *fixed[:1]]
            if rng.random() < 0.4:  # reads the same unchanged file again: identical output
                yield call(f"Re-reading {path}.", "read_file", {"path": path},
                           f"{path} ({text.count(chr(10)) + 1} lines)\n{text}"), [*base, sig, *fixed[:1]]
        hits = "\n".join(f"{p}:{rng.randint(1, 300)}:    days = prorate_days(start, end)" for p in rng.sample(
            sorted(files), 6))
        yield call("Searching for the callers of prorate_days.", "grep", {"pattern": "prorate_days"}, hits), [
            *base, hits.split("\n")[0], *fixed[:1]]
        done = failing.pop(0)
        fixed.append(done)
        passed += 1
        yield call(f"Patching the leap-year branch for {done}.", "apply_patch", {"diff": "--- a\n+++ b\n"},
                   f"Applied patch to billing/prorate.py (+{rng.randint(1, 9)} -{rng.randint(1, 5)})"), [
            *base, done, *fixed[:1]]


# --- long chat ----------------------------------------------------------------------------------

CHAT_SYSTEM = "You are Trip, a friendly travel planner. Keep answers practical and give prices in EUR."
CHAT_TASK = ("Hi! Please help us plan a 12-day trip to Japan in April for two adults. We are vegetarian, one of "
             "us has a nut allergy, and our total budget is 3,000 EUR excluding flights.")
TOPICS = ["Tokyo neighbourhoods", "Kyoto temples", "the rail pass", "ryokan etiquette", "Osaka food",
          "day trips from Kyoto", "onsen towns", "packing for April", "cherry blossom spots", "museums",
          "Nara", "Hiroshima and Miyajima", "Kanazawa", "Hakone", "shopping", "mobile data"]
DETAILS = [("We land at Kansai on April 3 at 14:20, flight NH178.", "NH178"),
           ("We booked Hotel Gracery Kyoto for April 5 to 9.", "Hotel Gracery Kyoto"),
           ("My partner's birthday is April 10, something special would be great.", "April 10"),
           ("We prefer trains to buses; long bus rides make me sick.", "trains to buses"),
           ("We fly home from Haneda on April 15 at 22:05.", "Haneda on April 15")]


def _answer(rng: random.Random, topic: str) -> str:
    parts = [f"Here is what I suggest for {topic}:"]
    for i in range(rng.randint(8, 14)):
        place = rng.choice(TOPICS)
        parts.append(f"{i + 1}. Spend {rng.choice(['a morning', 'an afternoon', 'an evening'])} on {place}. "
                     f"Expect about {rng.randint(5, 80)} EUR per person; vegetarian options are "
                     f"{rng.choice(['easy to find', 'limited, so book ahead', 'good at temple restaurants'])}. "
                     f"Ask for nut-free dishes by showing a card in Japanese. Getting there takes "
                     f"{rng.randint(10, 90)} minutes by train.")
    return "\n".join(parts)


def long_chat(rng: random.Random) -> Iterator[Step]:
    told: list[str] = []
    base = ["vegetarian", "nut allergy", "3,000 EUR"]
    for n in range(1, 10_000):
        topic = rng.choice(TOPICS)
        answer = _answer(rng, topic)
        if n % 4 == 0 and told:
            answer += "\n\nRecap so far: " + "; ".join(told) + "."
        detail = DETAILS[(n // 3) % len(DETAILS)] if n % 3 == 0 else None
        question = f"Thanks! Now, what about {rng.choice(TOPICS)}?"
        if detail is not None:
            question = f"{detail[0]} {question}"
            if detail[1] not in told:
                told.append(detail[1])
        recent = [detail[1]] if detail else []
        yield [{"role": "assistant", "content": answer}, {"role": "user", "content": question}], [
            *base, *recent, *told]


# --- driver -------------------------------------------------------------------------------------

KINDS: dict[str, tuple[str, str, Callable[[random.Random], Iterator[Step]], str]] = {
    "react_orders": (REACT_SYSTEM, REACT_TASK, react_orders, "ReAct loop over a JSON order API"),
    "coding_agent": (CODE_SYSTEM, CODE_TASK, coding_agent, "coding agent reading files and running tests"),
    "long_chat": (CHAT_SYSTEM, CHAT_TASK, long_chat, "long trip-planning chat"),
}


def build(kind: str, tokenizer: Tokenizer) -> dict[str, Any]:
    system, task, steps, description = KINDS[kind]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": task}]
    tokens = tokenizer.count_messages(MODEL, messages)
    checkpoints, previous = [], None
    targets = sorted(SIZES.items(), key=lambda kv: kv[1])
    for added, facts in steps(random.Random(f"{kind}-1")):
        messages += added
        tokens += sum(tokenizer.count_messages(MODEL, [m]) - 3 for m in added)
        here = {"upto": len(messages), "tokens": tokens, "facts": sorted(set(facts))}
        name, size = targets[len(checkpoints)]
        if tokens >= size:  # the step boundary closest to the target size
            best = previous if previous and size - previous["tokens"] < tokens - size else here
            checkpoints.append({"name": name, **best})
            if len(checkpoints) == len(targets):
                break
        previous = here
    return {"kind": kind, "description": description, "model": MODEL, "checkpoints": checkpoints,
            "messages": messages[: checkpoints[-1]["upto"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "transcripts")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer()
    for kind in KINDS:
        data = build(kind, tokenizer)
        path = args.out / f"{kind}.json.gz"
        raw = json.dumps(data, indent=1, sort_keys=True).encode()
        path.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
        sizes = ", ".join(f"{c['name']}={c['tokens']}" for c in data["checkpoints"])
        print(f"{path.relative_to(ROOT)}: {len(data['messages'])} messages, {sizes}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
