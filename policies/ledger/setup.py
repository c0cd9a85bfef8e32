"""The persistent usage ledger: one record per request, SQLite by default, Redis when shared.

``open_ledger`` picks the store from config (``state.backend: redis`` puts all
replicas' records in one Redis stream; otherwise the SQLite file at
``ledger.sqlite_path``), starts the batching writer, and registers its sink and
its closer on the app state.
"""
from __future__ import annotations

from gateway.appstate import AppState
from gateway.config_model import Config
from policies.ledger.writer import LedgerWriter, UsageStore


async def open_ledger(st: AppState, config: Config) -> LedgerWriter | None:
    if not config.ledger.enabled:
        return None
    store: UsageStore
    if config.state.backend == "redis" and st.backend is not None:
        from policies.ledger.redis import RedisStore

        store = RedisStore(st.backend, config.state.key_prefix)
    else:
        from policies.ledger.sqlite import SqliteStore

        store = SqliteStore(config.ledger.sqlite_path)
    writer = LedgerWriter(store, config.ledger, st.metrics)
    await writer.start()
    st.ledger = writer
    st.sinks.append(writer.sink)
    st.closers.append(writer.close)
    return writer
