"""The usage ledger in an SQLite file: the default, embedded, survives restarts.

Every database call runs on one dedicated thread (SQLite connections belong to
one thread, and the event loop must never wait on disk). WAL mode lets several
worker processes on one host append to the same file and read it at once;
``busy_timeout`` makes a writer wait briefly for another's lock instead of
failing.
"""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from policies.ledger.record import COLUMNS, GROUP_BY, UsageRecord, aggregate

T = TypeVar("T")
_TYPES = {
    "ts": "REAL NOT NULL",
    "stream": "INTEGER",
    "prompt": "INTEGER",
    "completion": "INTEGER",
    "cached": "INTEGER",
    "reasoning": "INTEGER",
    "estimated": "INTEGER",
    "duration_s": "REAL",
    "ttft_s": "REAL",
    "attempts": "INTEGER",
    "status": "INTEGER",
    "cost_usd": "REAL",
}
_SCHEMA = "CREATE TABLE IF NOT EXISTS usage ({})".format(
    ", ".join(f"{name} {_TYPES.get(name, 'TEXT')}" for name in COLUMNS))
_INSERT = "INSERT INTO usage ({}) VALUES ({})".format(", ".join(COLUMNS), ", ".join("?" for _ in COLUMNS))
_SELECT = "SELECT {} FROM usage WHERE ts >= ? AND ts <= ?".format(", ".join(COLUMNS))
_STREAM, _ESTIMATED = COLUMNS.index("stream"), COLUMNS.index("estimated")


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        """Open (creating) the file; a path that cannot be written stops the start with a clear message."""
        try:
            await self._run(self._open)
        except (OSError, sqlite3.Error) as exc:
            raise RuntimeError(f"ledger.sqlite_path: cannot open {self.path}: {exc} (set a writable path, "
                               "or ledger.enabled: false)") from exc

    def _open(self) -> None:
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(_SCHEMA)
        _add_missing_columns(conn)
        conn.execute("CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts)")
        self._conn = conn

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("ledger store is not open")
        return self._conn

    async def write(self, records: Sequence[UsageRecord]) -> None:
        await self._run(self._write, records)  # a record is its row: nothing to build on the loop

    def _write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        db = self._db()
        with db:  # one transaction per batch: one fsync, all or nothing
            db.execute("BEGIN")
            db.executemany(_INSERT, map(_row, rows))

    async def query(self, group_by: str, since: float, until: float) -> list[dict[str, Any]]:
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}")
        return await self._run(self._query, group_by, since, until)

    def _query(self, group_by: str, since: float, until: float) -> list[dict[str, Any]]:
        rows = self._db().execute(_SELECT, (since, until))
        return aggregate((UsageRecord.from_row(row) for row in rows), group_by)

    async def purge(self, before: float) -> int:
        return await self._run(self._purge, before)

    def _purge(self, before: float) -> int:
        return self._db().execute("DELETE FROM usage WHERE ts < ?", (before,)).rowcount

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._pool.shutdown(wait=True)


def _row(record: tuple[Any, ...]) -> tuple[Any, ...]:
    """A record as sqlite3 binds it cheapest: a plain tuple (faster than a subclass), its two flags as 0/1.
    sqlite3 binds an exact int, float or str at once but first tries to adapt anything else (a registry
    lookup, then ``__adapt__``/``__conform__`` looked up): ~3.3k instructions for each bool (valgrind), which
    it then binds as an int all the same. The stored row is unchanged. 38.6k -> 35.0k instructions a row."""
    return (*record[:_STREAM], 1 if record[_STREAM] else 0, *record[_STREAM + 1:_ESTIMATED],
            1 if record[_ESTIMATED] else 0, *record[_ESTIMATED + 1:])


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """A file written by an older version lacks the newer columns (e.g. ``continued_from``): add them."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
    for name in COLUMNS:
        if name not in have:
            try:
                kind = _TYPES.get(name, "TEXT")
                default = " DEFAULT ''" if kind == "TEXT" else ""
                conn.execute(f"ALTER TABLE usage ADD COLUMN {name} {kind}{default}")
            except sqlite3.OperationalError:  # another process added it meanwhile
                pass
