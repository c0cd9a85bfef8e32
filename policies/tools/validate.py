"""Start-up checks of the ``tools`` block: ``dotted.path: what is wrong``."""
from __future__ import annotations

from urllib.parse import urlsplit

from gateway.config_model import Config


def problems(cfg: Config) -> list[str]:
    found: list[str] = []
    for name, tool in cfg.tools.items():
        parts = urlsplit(tool.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            found.append(f"tools.{name}.base_url: must be an http(s) URL, got {tool.base_url!r}")
    return found
