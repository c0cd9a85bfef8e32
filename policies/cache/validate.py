"""Start-up checks of the ``cache`` block: ``dotted.path: what is wrong``."""
from __future__ import annotations

from gateway.config_model import Config


def problems(cfg: Config) -> list[str]:
    found = []
    sem = cfg.cache.semantic.embedder
    if sem != "local" and not (sem.startswith("upstream:") and sem.count(":") >= 2):
        found.append("cache.semantic.embedder: must be 'local' or 'upstream:<name>:<model>'")
    if not 0 <= cfg.cache.coalesce.fleet_wait_s <= 10:
        found.append("cache.coalesce.fleet_wait_s: must be between 0 and 10 seconds")
    return found
