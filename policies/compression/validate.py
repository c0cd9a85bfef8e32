"""Start-up checks of the ``compression:`` block (global and per route).

Types are checked by the config loader; these are the value rules it cannot
express. Problems are reported as ``dotted.path: what is wrong`` lines, like
the loader's, so a bad value fails at start-up and never per request.
"""
from __future__ import annotations

from gateway.config_model import Config
from policies.compression.config import CompressionConfig


def problems(config: Config) -> list[str]:
    """Problems of the global ``compression:`` block and of each route's merged one."""
    found = _compression("compression", config.compression)
    for i, route in enumerate(config.routes):
        if route.compression is not None:
            found += _compression(f"routes[{i}].compression", route.compression)
    return found


def _compression(path: str, cfg: CompressionConfig) -> list[str]:
    found = []
    if not 0 < cfg.target <= 1:
        found.append(f"{path}.target: must be in (0, 1], got {cfg.target}")
    if cfg.max_prompt_tokens is not None and cfg.max_prompt_tokens < 1:
        found.append(f"{path}.max_prompt_tokens: must be >= 1")
    if cfg.tool_output_max_tokens < 64:
        found.append(f"{path}.tool_output_max_tokens: must be >= 64 (room for a head, a tail and the marker)")
    if cfg.keep_last_turns < 1:
        found.append(f"{path}.keep_last_turns: must be >= 1 (the last turn holds the current question)")
    if cfg.min_saving_tokens < 0:
        found.append(f"{path}.min_saving_tokens: must be >= 0")
    return found
