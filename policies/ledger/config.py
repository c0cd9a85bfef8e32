"""The ``ledger`` block."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerConfig:
    enabled: bool = True
    sqlite_path: str = "gateway-usage.sqlite3"
    retention_days: float = 30.0
    batch_size: int = 256
    flush_interval_s: float = 1.0
    max_queue: int = 100_000  # records waiting for a write; beyond it the oldest are dropped (and counted)
