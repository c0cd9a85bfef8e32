"""The SQLite ledger store: batches, queries by window and group, retention, reopening."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from policies.ledger.record import COLUMNS, UsageRecord
from policies.ledger.sqlite import SqliteStore
from tests.policies.ledger.test_record import rec


async def test_write_query_purge_and_reopen(tmp_path: Path) -> None:
    """Records written in batches are queried by window, survive reopening, and purge by age."""
    path = tmp_path / "sub" / "ledger.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.write([rec(ts=float(t), tenant="acme" if t % 2 else "beta") for t in range(100)])
    await store.write([rec(ts=200.0, model="other-model")])
    groups = await store.query("tenant", 10.0, 19.0)
    assert {g["key"]: g["requests"] for g in groups} == {"acme": 5, "beta": 5}
    await store.close()
    again = SqliteStore(path)
    await again.open()
    assert sum(g["requests"] for g in await again.query("model", 0, 1e12)) == 101
    assert await again.purge(50.0) == 50
    assert sum(g["requests"] for g in await again.query("model", 0, 1e12)) == 51
    await again.close()


async def test_flags_are_stored_as_the_integers_a_bool_binds_to(tmp_path: Path) -> None:
    """``stream`` and ``estimated`` go in as 0/1 (as sqlite3 binds a bool itself, so files written before
    read the same) and come back as bools; the other values are stored as they are (``None`` as NULL)."""
    store = SqliteStore(tmp_path / "ledger.sqlite3")
    await store.open()
    records = [rec(ts=1.0, stream=True, estimated=False, cost_usd=None),
               rec(ts=2.0, stream=False, estimated=True, cost_usd=0.5)]
    await store.write(records)
    await store.close()
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    stored = conn.execute("SELECT stream, typeof(stream), estimated, typeof(estimated), cost_usd FROM usage "
                          "ORDER BY ts").fetchall()
    assert stored == [(1, "integer", 0, "integer", None), (0, "integer", 1, "integer", 0.5)]
    rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM usage ORDER BY ts").fetchall()
    conn.close()
    assert [UsageRecord.from_row(row) for row in rows] == records


async def test_two_stores_share_one_file(tmp_path: Path) -> None:
    """Two writers (two worker processes) append to the same WAL file and both see every record."""
    a, b = SqliteStore(tmp_path / "l.db"), SqliteStore(tmp_path / "l.db")
    await a.open()
    await b.open()
    await a.write([rec(request_id="a")] * 3)
    await b.write([rec(request_id="b")] * 4)
    assert (await a.query("tenant", 0, 1e12))[0]["requests"] == 7
    await a.close()
    await b.close()


async def test_unwritable_path_fails_with_the_config_key(tmp_path: Path) -> None:
    """A path that cannot be created names ledger.sqlite_path in the error."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = SqliteStore(blocker / "ledger.sqlite3")
    with pytest.raises(RuntimeError, match="ledger.sqlite_path"):
        await store.open()
    await store.close()


async def test_a_file_from_before_continued_from_gets_the_column(tmp_path: Path) -> None:
    """An older file (no ``continued_from`` column) opens, keeps its rows, and takes new records."""
    path = tmp_path / "old.sqlite3"
    old = [c for c in COLUMNS if c != "continued_from"]
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE usage ({', '.join(old)})")
        conn.execute(f"INSERT INTO usage VALUES ({', '.join('?' for _ in old)})", rec().as_row()[:-1])
    conn.close()
    store = SqliteStore(path)
    await store.open()
    await store.write([rec(request_id="new", continued_from="primary")])
    assert sum(g["requests"] for g in await store.query("model", 0, 1e12)) == 2
    rows = await store._run(lambda: store._db().execute(
        "SELECT request_id, continued_from FROM usage ORDER BY request_id").fetchall())
    assert rows == [("new", "primary"), ("r", "")]
    await store.close()
