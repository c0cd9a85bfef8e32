"""/admin/stats on any worker or replica reports the totals of all of them, with a per-process breakdown."""
from __future__ import annotations

import asyncio

from tests.e2e.fleet import Fleet, Pinned
from tests.support.until import until


async def send(pin: Pinned, n: int, tag: str) -> None:
    client = pin.client()
    for i in range(n):
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"stats {tag} {i}"}], max_tokens=3)


async def test_any_process_reports_the_whole_fleet(fleet: Fleet, pair: tuple[Pinned, Pinned]) -> None:
    a, b = pair
    await b.stats()  # each process publishes its windows as it answers: B's entry is fresh for A's read
    base = (await a.stats())["requests"]["total"]
    await asyncio.gather(send(a, 50, "a"), send(b, 50, "b"))  # 100 requests, round-robin over 2 processes

    async def says_100_everywhere() -> bool:
        totals = [(await pin.stats())["requests"]["total"] for pin in (a, b)]
        return totals == [base + 100] * 2

    await until(says_100_everywhere, timeout=10, interval=0.1, message="both processes report all 100")
    summary = await b.stats()
    assert summary["scope"] == fleet.scope and summary["scopes"]["requests"] == fleet.scope
    assert summary["scopes"]["recent"] == "worker"  # the last-requests table is this process's
    assert summary["shared"] == {"local_only": False, "banner": None}
    rows = {r["replica"]: r for r in summary["replicas"]}
    assert {a.replica, b.replica} <= set(rows) and rows[b.replica]["self"] and not rows[a.replica]["self"]
    assert sum(r["requests"] for r in rows.values()) == summary["requests"]["total"]
