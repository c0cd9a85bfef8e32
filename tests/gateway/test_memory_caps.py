"""gateway.memory_caps: do the configured caps fit the container's memory limit?"""
from __future__ import annotations

from pathlib import Path

from gateway.config import parse_config
from gateway.memory_caps import MIB, cgroup_limit, configured_caps, warnings

BASE = {"upstreams": {"u": {"base_url": "http://127.0.0.1:9"}}, "routes": [{"match": {"model": "*"},
                                                                         "upstream": "u"}]}


def test_the_defaults_fit_the_sidecars_512mi_with_room() -> None:
    config = parse_config({**BASE, "cache": {"semantic": {"enabled": True}}}, {})
    caps = configured_caps(config)
    assert caps.parts["cache.semantic.max_bytes"] == 32 * MIB
    assert caps.parts["cache.exact.max_bytes"] == 64 * MIB
    assert caps.total <= 400 * MIB
    assert warnings(config, 1, limit=512 * MIB) == []


def test_caps_over_the_limit_warn_naming_the_parts() -> None:
    config = parse_config({**BASE, "cache": {"exact": {"max_bytes": 512 * MIB}}}, {})
    [warning] = warnings(config, 2, limit=512 * MIB)
    assert "2 worker(s)" in warning and "cache.exact.max_bytes 512 MiB" in warning and "512 MiB" in warning


def test_cgroup_limit_v2_v1_and_unlimited(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "memory.max", tmp_path / "limit_in_bytes"
    assert cgroup_limit((v2, v1)) is None  # nothing visible
    v1.write_text(str(512 * MIB))
    assert cgroup_limit((v2, v1)) == 512 * MIB
    v2.write_text("max\n")
    assert cgroup_limit((v2, v1)) is None  # v2 wins: no limit
    v2.write_text(f"{256 * MIB}\n")
    assert cgroup_limit((v2, v1)) == 256 * MIB
    v1.write_text(str(1 << 62))
    assert cgroup_limit((v1,)) is None


def test_the_mcp_caches_count_when_servers_are_configured() -> None:
    mcp = {"mcp": {"servers": {"files": {"url": "http://127.0.0.1:9/mcp"}}}}
    assert "MCP catalog and result caches" not in configured_caps(parse_config(BASE, {})).parts  # control
    caps = configured_caps(parse_config({**BASE, **mcp}, {}))
    assert caps.parts["MCP catalog and result caches"] == 16 * MIB
