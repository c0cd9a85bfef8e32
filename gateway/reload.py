"""Live config reload: SIGHUP, or a change of the config file, swaps in a new runtime.

A valid new config is built into a new ``Runtime`` (router, auth, policy chain,
via ``gateway.app.build_runtime``) and swapped in with one assignment, so every
request sees one config from start to end: open streams keep the objects they
already hold, new requests get the new ones. Upstream pools are diffed by
config: unchanged ones are kept (warm connections), new or changed ones are
created, and replaced or removed ones are closed only after every request that
was open at the swap has finished. An invalid config is refused with one log
line listing its problems, and the running config stays.

Kubernetes updates a mounted ConfigMap by swapping a symlink (``..data``), not by
writing the file, so the watcher re-resolves the path every poll and compares
(real path, inode, mtime, size); only when that changes does it read the file,
and only when the content hash changes does it reload. Polling (about once a
second) needs no inotify and works on every volume type.

Some settings are bound at start-up (listening address, workers, the shared
state backend, metrics port, tracing, ledger): a change there is reported as
"needs a restart" and the rest of the config is still applied.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.app import build_runtime, known_models
from gateway.appstate import AppState
from gateway.config import ConfigError, parse_config_text
from gateway.config_model import Config
from gateway.upstream import UpstreamClient

log = logging.getLogger("gateway.reload")
Fingerprint = tuple[str, int, int, int, int]
# Read once at start-up (listening sockets, the shared-state backend, observability set up by the app).
RESTART_ONLY = ("server.host", "server.port", "server.workers", "server.max_header_bytes",
                "server.access_log", "state", "metrics.enabled", "metrics.port", "tracing", "ledger")


@dataclass(slots=True)
class Reloader:
    """Watches one config file for one worker and applies changes to ``state``."""

    state: AppState
    path: Path
    interval_s: float = 1.0
    _fingerprint: Fingerprint | None = None
    _digest: str = ""
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _retiring: list[UpstreamClient] = field(default_factory=list)

    def start(self) -> None:
        """Remember the file as loaded, then watch it and SIGHUP until ``stop``."""
        self._fingerprint = fingerprint(self.path)
        self._digest = _digest_of(self.path) or ""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread: no SIGHUP
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self.state.closers.append(self.close_clients)
        self._spawn(self._poll_forever())

    async def stop(self) -> None:
        """Stop watching (drain begins): no config changes while the worker shuts down."""
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def check(self) -> str:
        """One poll: reload if the file changed. Returns applied|refused|unchanged|unreadable."""
        current = fingerprint(self.path)
        if current is None:
            return "unreadable"  # mid-swap or deleted: keep serving, look again next poll
        if current == self._fingerprint:
            return "unchanged"
        return await self.reload(reason="file_changed", force=False)

    async def reload(self, *, reason: str = "sighup", force: bool = True) -> str:
        """Read, validate and apply the file. ``force``: apply even if the content is unchanged."""
        async with self._lock:
            if self.state.lifecycle.draining:
                return "unchanged"
            seen = fingerprint(self.path)
            try:
                text = self.path.read_text(encoding="utf-8")
            except OSError:
                return "unreadable"
            digest = hashlib.sha256(text.encode()).hexdigest()
            self._fingerprint = seen
            if digest == self._digest and not force:
                return "unchanged"
            self._digest = digest
            try:
                config = parse_config_text(text)
                await self.apply(config)
            except ConfigError as err:
                return self._refused(reason, err.problems)
            except Exception as exc:  # a policy factory failed to build: same treatment as invalid config
                log.exception("config reload failed while building the new runtime")
                return self._refused(reason, [f"(build): {type(exc).__name__}: {exc}"[:500]])
            return "applied"

    async def apply(self, config: Config) -> None:
        """Build the new runtime, then swap it and the upstream pools in together (no await between)."""
        st = self.state
        old = st.config
        clients, created, replaced = plan_upstreams(st.upstreams, old, config)
        try:
            runtime = await build_runtime(st, config)
        except BaseException:
            await asyncio.gather(*(c.close() for c in created), return_exceptions=True)
            raise
        if st.metrics is not None:
            st.metrics.set_known_models(known_models(config))
        st.upstreams = clients
        st.runtime = runtime
        removed = [name for name in old.upstreams if name not in config.upstreams]
        if replaced or removed:
            self._retire(replaced, removed, old)
        if config.server.log_level != old.server.log_level and "GATEWAY_LOG_LEVEL" not in os.environ:
            logging.getLogger().setLevel(config.server.log_level.upper())
        self._count("applied")
        retired = sorted({c.name for c in replaced} | set(removed))
        log.warning("config reloaded", extra={"fields": {
            "event": "config_reload", "result": "applied", "digest": self._digest[:12],
            "upstreams_created": sorted(c.name for c in created), "upstreams_retired": retired,
            "needs_restart": restart_only_changes(old, config)}})

    async def close_clients(self) -> None:
        """Shutdown hook: close pools created by reloads and those still waiting to retire."""
        for task in list(self._tasks):
            task.cancel()
        clients = [*self.state.upstreams.values(), *self._retiring]
        self._retiring.clear()
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    def _retire(self, replaced: list[UpstreamClient], removed: list[str], old: Config) -> None:
        """Close old pools once every request open at the swap is done (bounded by their total timeout)."""
        open_now = {t for t in self.state.lifecycle.active if not t.done()}
        budget = max((u.timeouts.total_s for u in old.upstreams.values()), default=600.0) + 5.0
        mine = list(replaced)
        self._retiring.extend(mine)

        async def retire() -> None:
            if open_now:
                await asyncio.wait(open_now, timeout=budget)
            for name in removed:  # kept reachable for old requests until now; no new route names them
                client = self.state.upstreams.get(name)
                if client is not None and name not in self.state.config.upstreams:
                    del self.state.upstreams[name]
                    mine.append(client)
            done = {id(c) for c in mine}
            self._retiring[:] = [c for c in self._retiring if id(c) not in done]
            await asyncio.gather(*(c.close() for c in mine), return_exceptions=True)

        self._spawn(retire())

    def _refused(self, reason: str, problems: list[str]) -> str:
        self._count("refused")
        log.error("config reload refused; keeping the running config", extra={"fields": {
            "event": "config_reload", "result": "refused", "reason": reason, "path": str(self.path),
            "problems": problems}})
        return "refused"

    def _count(self, result: str) -> None:
        metrics = self.state.metrics
        if metrics is not None:
            metrics.counter("gateway_config_reloads_total", "Config reloads by result", ("result",)).labels(
                result).inc()

    def _on_sighup(self) -> None:
        self._spawn(self.reload(reason="sighup", force=True))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # the watcher must outlive any surprise in one poll
                log.exception("config watcher poll failed")


def plan_upstreams(current: dict[str, UpstreamClient], old: Config, new: Config
                   ) -> tuple[dict[str, UpstreamClient], list[UpstreamClient], list[UpstreamClient]]:
    """The next pool map: unchanged pools kept, new/changed ones created, removed ones kept for now.

    Returns (map, created, replaced). Removed upstreams stay in the map so that a
    request routed before the swap can still reach them; ``_retire`` drops them.
    """
    clients: dict[str, UpstreamClient] = {}
    created: list[UpstreamClient] = []
    replaced: list[UpstreamClient] = []
    for name, cfg in new.upstreams.items():
        existing = current.get(name)
        if existing is not None and old.upstreams.get(name) == cfg:
            clients[name] = existing
            continue
        clients[name] = UpstreamClient.create(name, cfg)
        created.append(clients[name])
        if existing is not None:
            replaced.append(existing)
    for name, client in current.items():
        if name not in clients:
            clients[name] = client
    return clients, created, replaced


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Dotted names of changed settings that only a restart applies."""
    changed = [dotted for dotted in RESTART_ONLY if _get(old, dotted) != _get(new, dotted)]
    encodings = ({n: m.encoding for n, m in cfg.models.items() if m.encoding} for cfg in (old, new))
    if next(encodings) != next(encodings):  # the tokenizer is built once, at start-up
        changed.append("models.*.encoding")
    return changed


def fingerprint(path: Path) -> Fingerprint | None:
    """(real path, device, inode, mtime, size) of what ``path`` points at now, following symlinks."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _digest_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_text(encoding="utf-8").encode()).hexdigest()
    except OSError:
        return None


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
