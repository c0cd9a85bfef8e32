"""Do the configured in-memory caps fit in the container? (``gateway check-config`` warns if not.)

Every cache and memo is bounded in bytes (issue 15); their sum, per worker process, plus the
process's own baseline must stay under the container's memory limit or the kernel kills the pod
before any cap is reached. The limit is read from the cgroup (v2 ``memory.max``, else v1
``memory.limit_in_bytes``) when the process can see it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.config_model import Config
from gateway.tokens.tokenizer import DEFAULT_MEMO_MAX_CHARS
from policies.mcp.config import STORE_MAX_BYTES

MIB = 1024 * 1024
# RSS of an idle worker with the tokenizer encodings and the local embedder loaded (measured: ~170 MB).
BASELINE_BYTES = 170 * MIB
EMBEDDER_MEMO_BYTES = 8 * MIB  # policies.cache.embedder.MEMO_MAX_BYTES
CGROUP_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
_UNLIMITED = 1 << 60  # cgroup v1 says "no limit" with a huge number


@dataclass(frozen=True, slots=True)
class Caps:
    parts: dict[str, int]
    workers: int

    @property
    def per_worker(self) -> int:
        return BASELINE_BYTES + sum(self.parts.values())

    @property
    def total(self) -> int:
        return self.per_worker * self.workers


def configured_caps(config: Config, workers: int = 1) -> Caps:
    cache = config.cache
    parts = {
        "cache.exact.max_bytes": cache.exact.max_bytes if cache.exact.enabled else 0,
        "tool cache (exact/4)": cache.exact.max_bytes // 4,
        "cache.embeddings.max_bytes": cache.embeddings.max_bytes if cache.embeddings.enabled else 0,
        "token count memo": DEFAULT_MEMO_MAX_CHARS,
    }
    if config.mcp.servers:
        parts["MCP catalog and result caches"] = 2 * STORE_MAX_BYTES
    semantic = [cache.semantic, *(r.cache.semantic for r in config.routes if r.cache is not None)]
    if any(s.enabled and s.mode != "off" for s in semantic):
        parts["cache.semantic.max_bytes"] = max(s.max_bytes for s in semantic)
        parts["embedder memo"] = EMBEDDER_MEMO_BYTES
    return Caps(parts, workers)


def cgroup_limit(files: tuple[Path, ...] = CGROUP_FILES) -> int | None:
    """The container's memory limit in bytes, or None when there is none or it cannot be read."""
    for path in files:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw == "max" or not raw.isdigit() or int(raw) >= _UNLIMITED:
            return None
        return int(raw)
    return None


def warnings(config: Config, workers: int = 1, limit: int | None = None) -> list[str]:
    """One warning when the caps (times the workers, plus each worker's baseline) exceed ``limit``."""
    limit = cgroup_limit() if limit is None else limit
    if limit is None:
        return []
    caps = configured_caps(config, workers)
    if caps.total <= limit:
        return []
    detail = ", ".join(f"{name} {size // MIB} MiB" for name, size in caps.parts.items() if size)
    return [f"memory: the in-memory caps need up to {caps.total // MIB} MiB ({workers} worker(s) x "
            f"({BASELINE_BYTES // MIB} MiB baseline + {detail})) but the container's memory limit is "
            f"{limit // MIB} MiB; lower the caps or raise the limit"]
