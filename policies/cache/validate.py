"""Start-up checks of the ``cache`` block: ``dotted.path: what is wrong``."""
from __future__ import annotations

from gateway.config_model import Config


def problems(cfg: Config) -> list[str]:
    sem = cfg.cache.semantic.embedder
    if sem != "local" and not (sem.startswith("upstream:") and sem.count(":") >= 2):
        return ["cache.semantic.embedder: must be 'local' or 'upstream:<name>:<model>'"]
    return []
