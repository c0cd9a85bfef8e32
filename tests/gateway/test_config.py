"""Config loading: defaults, interpolation, every problem listed with its dotted path."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config, parse_config_text, resolve_config_path
from gateway.config_model import Config

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_defaults_point_at_openai_with_env_key() -> None:
    """No config file: one upstream `openai`, catch-all route, key from OPENAI_API_KEY."""
    cfg = load_config(None, env={"OPENAI_API_KEY": "sk-abc"})
    assert cfg.upstreams["openai"].base_url == "https://api.openai.com/v1"
    assert cfg.upstreams["openai"].api_key == "sk-abc"
    assert cfg.routes[0].match.model == "*" and cfg.routes[0].upstream == "openai"
    assert cfg.server.port == 8080 and cfg.state.backend == "memory"


def test_unset_whole_value_variable_becomes_null() -> None:
    """`api_key: ${OPENAI_API_KEY}` with the variable unset means: forward the client's key."""
    cfg = load_config(None, env={})
    assert cfg.upstreams["openai"].api_key is None


def test_interpolation_with_default() -> None:
    """`${VAR:-default}` uses the default when VAR is unset, the value when set."""
    text = "upstreams: {a: {base_url: '${URL:-http://x:1/v1}'}}\nroutes: [{upstream: a}]"
    assert parse_config_text(text, env={}).upstreams["a"].base_url == "http://x:1/v1"
    assert parse_config_text(text, env={"URL": "http://y:2"}).upstreams["a"].base_url == "http://y:2"


def test_every_problem_is_listed_with_dotted_path() -> None:
    """Unknown keys, wrong types, missing fields and bad references are all reported at once."""
    raw = {
        "server": {"port": "eighty", "bogus": 1},
        "upstreams": {"a": {"base_url": "ftp://nope", "pool": {"max_connections": 0}}},
        "routes": [{"match": {"model": "x"}, "upstream": "missing"}, {"match": {"model": "y"}}],
        "cache": {"exact": {"mode": "sometimes"}},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={})
    problems = err.value.problems
    assert "server.port: must be int, got str" in problems
    assert "server.bogus: unknown key" in problems
    assert "routes[1].upstream: required" in problems
    assert any(p.startswith("cache.exact.mode: must be one of") for p in problems)


def test_semantic_problems_after_types() -> None:
    """Cross-field rules: route upstreams must exist, URLs must be http(s)."""
    raw = {"upstreams": {"a": {"base_url": "ftp://nope"}},
           "routes": [{"upstream": "zz", "fallbacks": [{"upstream": "yy"}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={})
    assert "upstreams.a.base_url: must be an http(s) URL, got 'ftp://nope'" in err.value.problems
    assert "routes[0].upstream: unknown upstream 'zz'" in err.value.problems
    assert "routes[0].fallbacks[0].upstream: unknown upstream 'yy'" in err.value.problems


def test_route_overrides_merge_over_global_blocks() -> None:
    """A route's partial cache/retry block keeps the other global/upstream settings."""
    raw = {
        "upstreams": {"a": {"base_url": "http://a/v1", "retry": {"max_attempts": 5, "base_delay_s": 0.1}}},
        "cache": {"exact": {"ttl_s": 100, "max_entries": 7}},
        "routes": [{"upstream": "a", "cache": {"exact": {"ttl_s": 5}}, "retry": {"max_attempts": 2}}],
    }
    route = parse_config(raw, env={}).routes[0]
    assert route.cache is not None and route.cache.exact.ttl_s == 5 and route.cache.exact.max_entries == 7
    assert route.retry is not None and route.retry.max_attempts == 2 and route.retry.base_delay_s == 0.1


def test_config_path_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config, else $GATEWAY_CONFIG, else ./config.yaml, else defaults (None)."""
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(None, env={}) is None
    (tmp_path / "config.yaml").write_text("{}")
    assert resolve_config_path(None, env={}) == Path("config.yaml")
    assert resolve_config_path(None, env={"GATEWAY_CONFIG": "/e.yaml"}) == Path("/e.yaml")
    assert resolve_config_path("/c.yaml", env={"GATEWAY_CONFIG": "/e.yaml"}) == Path("/c.yaml")


def test_repository_config_yaml_is_valid() -> None:
    """The commented example at the root is a working config."""
    cfg = load_config(ROOT / "config.yaml", env={})
    assert "openai" in cfg.upstreams


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    """`gateway check-config` exits 0 on a valid file, 2 with one line per problem otherwise."""
    good = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(ROOT / "config.yaml")],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("server: {port: x}\nupstreams: {}\nwat: 1\n")
    bad = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(bad_file)],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert "server.port: must be int, got str" in lines
    assert "wat: unknown key" in lines


def test_policy_blocks_are_checked_by_check_config() -> None:
    """Rate-limit ranges, unknown retry_on conditions and server.workers are config errors,
    not start-up crashes."""
    raw = {"server": {"workers": 0, "max_inflight": 0},
           "upstreams": {"a": {"base_url": "http://a/v1", "rate_limit": {"headroom": 2, "rpm": -1},
                               "retry": {"retry_on": ["503", "sometimes"]}}},
           "auth": {"mode": "keys", "keys": [{"key": "k", "tenant": "t", "tpm": -5}]},
           "compression": {"target": 3},
           "routes": [{"upstream": "a"}]}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={})
    problems = err.value.problems
    assert "compression.target: must be in (0, 1], got 3.0" in problems
    assert "upstreams.a.rate_limit.headroom: must be in (0, 1]" in problems
    assert "upstreams.a.rate_limit.rpm: must be >= 0" in problems
    assert any(p.startswith("upstreams.a.retry.retry_on: unknown condition 'sometimes'") for p in problems)
    assert "auth.keys[0].tpm: must be >= 0" in problems
    assert any(p.startswith("server.workers: must be >= 1") for p in problems)
    assert "server.max_inflight: must be >= 1" in problems


def test_pool_client_is_raw_by_default_and_aiohttp_on_request() -> None:
    """``pool.client`` selects the upstream client: raw unless ``aiohttp`` is asked for; anything else is
    refused with its dotted path, as is a raw client without a usable URL."""
    def parsed(upstreams: dict[str, Any], **extra: Any) -> Config:
        return parse_config({"routes": [{"upstream": "a"}], "upstreams": upstreams, **extra}, env={})

    assert parsed({"a": {"base_url": "http://a/v1"}}).upstreams["a"].pool.client == "raw"
    chosen = parsed({"a": {"base_url": "http://a/v1", "pool": {"client": "aiohttp"}}})
    assert chosen.upstreams["a"].pool.client == "aiohttp"
    with pytest.raises(ConfigError) as err:
        parsed({"a": {"base_url": "http://a/v1", "pool": {"client": "curl"}}})
    assert "upstreams.a.pool.client: must be one of 'aiohttp', 'raw', got 'curl'" in err.value.problems
    with pytest.raises(ConfigError) as err:
        parsed({"a": {"base_url": "http://a/v1", "pool": {"keepalive_s": 0}},
                "b": {"base_url": "http://b:port/v1"}})
    problems = err.value.problems
    assert "upstreams.a.pool.keepalive_s: must be > 0" in problems
    assert any(p.startswith("upstreams.b.pool.client: raw: ") for p in problems)
