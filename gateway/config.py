"""Load YAML config into the frozen dataclasses of ``config_model``.

Every mistake is reported, not just the first: the converter walks the
dataclass type hints and collects ``dotted.path: what is wrong`` lines, which
``gateway check-config`` prints and ``gateway serve`` refuses to start with.
``${VAR}`` and ``${VAR:-default}`` are interpolated from the environment; a
value that is only ``${VAR}`` with VAR unset becomes null (so an optional
``api_key`` falls back to forwarding the client's key in passthrough mode; in keys mode that is an
error unless the upstream sets ``forward_client_key: true``).
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from gateway.config_model import STATEFUL_ENDPOINTS, Config, RouteConfig
from gateway.rawhttp.origin import Origin
from policies.config_checks import FEATURE_CHECKS

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ROUTE_OVERRIDABLE = ("cache", "compression", "budgets")
ROUTE_OVER_UPSTREAM = ("retry", "timeouts")
_MISSING = object()


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


DEFAULT_CONFIG: dict[str, Any] = {
    "upstreams": {"openai": {"base_url": "https://api.openai.com/v1", "api_key": "${OPENAI_API_KEY}"}},
    "routes": [{"match": {"model": "*"}, "upstream": "openai"}],
}


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        whole = _ENV.fullmatch(value)
        if whole and whole.group(1) not in env and whole.group(2) is None:
            return None
        return _ENV.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def resolve_config_path(cli_path: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """--config, else $GATEWAY_CONFIG, else ./config.yaml, else None (built-in defaults)."""
    env = os.environ if env is None else env
    if cli_path:
        return Path(cli_path)
    if env.get("GATEWAY_CONFIG"):
        return Path(env["GATEWAY_CONFIG"])
    local = Path("config.yaml")
    return local if local.exists() else None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    if path is None:
        return parse_config(DEFAULT_CONFIG, env)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"(file): cannot read {path}: {exc.strerror or exc}"]) from exc
    return parse_config_text(text, env)


def parse_config_text(text: str, env: Mapping[str, str] | None = None) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"(file): invalid YAML: {exc}"]) from exc
    if raw is None:
        raw = {}
    return parse_config(raw, env)


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(["(root): must be a mapping"])
    raw = interpolate(raw, env)
    raw = _merge_route_overrides(raw, problems)
    cfg: Config = convert(Config, raw, "", problems)
    if not problems:
        problems.extend(check_semantics(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def _merge_route_overrides(raw: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Route policy blocks are partial: deep-merge them over the global (or upstream) block."""
    routes = raw.get("routes")
    if not isinstance(routes, list):
        return raw
    declared = raw.get("upstreams")
    upstreams: dict[str, Any] = declared if isinstance(declared, dict) else {}
    merged_routes = []
    for route in routes:
        if not isinstance(route, dict):
            merged_routes.append(route)
            continue
        route = dict(route)
        for key in ROUTE_OVERRIDABLE:
            if isinstance(route.get(key), dict):
                route[key] = deep_merge(raw.get(key) or {}, route[key])
        upstream_name = route.get("upstream")
        up = upstreams.get(upstream_name) if isinstance(upstream_name, str) else None
        for key in ROUTE_OVER_UPSTREAM:
            if isinstance(route.get(key), dict):
                base = (up or {}).get(key) if isinstance(up, dict) else None
                route[key] = deep_merge(base or {}, route[key])
        merged_routes.append(route)
    return {**raw, "routes": merged_routes}


def deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = deep_merge(base.get(k), v) if k in base else v
        return out
    return override


def convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Convert ``value`` to type ``tp``; on a mistake, note it and return None."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _convert_union(tp, value, path, problems)
    if origin is Literal:
        if value not in typing.get_args(tp):
            allowed = ", ".join(repr(a) for a in typing.get_args(tp))
            problems.append(f"{_p(path)}: must be one of {allowed}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{_p(path)}: must be a list, got {_tname(value)}")
            return []
        (item_tp,) = typing.get_args(tp)
        return [convert(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{_p(path)}: must be a mapping, got {_tname(value)}")
            return {}
        _, val_tp = typing.get_args(tp)
        return {str(k): convert(val_tp, v, _join(path, str(k)), problems) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path, problems)
    return _convert_scalar(tp, value, path, problems)


def _convert_union(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if value is None:
        if type(None) in typing.get_args(tp):
            return None
        problems.append(f"{_p(path)}: must not be null")
        return None
    return convert(args[0] if len(args) == 1 else Any, value, path, problems)


def _convert_scalar(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    problems.append(f"{_p(path)}: must be {tp.__name__}, got {_tname(value)}")
    return None


def _convert_dataclass(cls: Any, value: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(value, dict):
        problems.append(f"{_p(path)}: must be a mapping, got {_tname(value)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            problems.append(f"{_join(path, str(key))}: unknown key")
    kwargs: dict[str, Any] = {}
    before = len(problems)
    for name, f in fields.items():
        if name in value:
            kwargs[name] = convert(hints[name], value[name], _join(path, name), problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{_join(path, name)}: required")
    if len(problems) > before:
        return None
    return cls(**kwargs)


def check_semantics(cfg: Config) -> list[str]:
    """Cross-field rules that types alone cannot express."""
    problems = _check_upstreams(cfg)
    for check in FEATURE_CHECKS:
        problems += check(cfg)
    problems += _check_server_limits(cfg)
    for i, route in enumerate(cfg.routes):
        problems += _check_route(i, route, cfg)
    problems += _check_listener(cfg)
    problems += _check_auth(cfg)
    problems += _check_state(cfg)
    return problems


def _check_upstreams(cfg: Config) -> list[str]:
    problems: list[str] = []
    if not cfg.upstreams:
        problems.append("upstreams: at least one upstream is required")
    for name, up in cfg.upstreams.items():
        problems += check_url(f"upstreams.{name}.base_url", up.base_url)
        if up.pool.max_connections < 1:
            problems.append(f"upstreams.{name}.pool.max_connections: must be >= 1")
        if up.pool.keepalive_s <= 0:
            problems.append(f"upstreams.{name}.pool.keepalive_s: must be > 0")
        if up.pool.client == "raw":
            problems += _raw_origin_problems(name, up.base_url)
        for field_name in ("embeddings_max_inputs", "embeddings_max_tokens"):
            if getattr(up.limits, field_name) < 1:
                problems.append(f"upstreams.{name}.limits.{field_name}: must be >= 1")
    return problems


def _raw_origin_problems(name: str, base_url: str) -> list[str]:
    try:
        Origin.from_url(base_url)
    except ValueError as exc:
        return [f"upstreams.{name}.pool.client: raw: {exc}"]
    return []


def _check_server_limits(cfg: Config) -> list[str]:
    problems: list[str] = []
    if cfg.server.max_inflight < 1:
        problems.append("server.max_inflight: must be >= 1")
    if cfg.server.body_timeout_s <= 0:
        problems.append("server.body_timeout_s: must be > 0")
    for name in ("client_max_inflight", "client_max_reading"):
        if getattr(cfg.server, name) < 1:
            problems.append(f"server.{name}: must be >= 1")
    if cfg.server.header_timeout_s <= 0:
        problems.append("server.header_timeout_s: must be > 0")
    if cfg.server.work_threads < 1:
        problems.append("server.work_threads: must be >= 1")
    if cfg.server.work_budget_s <= 0:
        problems.append("server.work_budget_s: must be > 0")
    if cfg.server.workers is not None and cfg.server.workers < 1:
        problems.append("server.workers: must be >= 1 (or null for one per available core)")
    return problems


def _check_listener(cfg: Config) -> list[str]:
    problems: list[str] = []
    if not 1 <= cfg.server.port <= 65535:
        problems.append("server.port: must be between 1 and 65535")
    if cfg.server.max_body_bytes < 1024:
        problems.append("server.max_body_bytes: must be at least 1024")
    return problems


def _check_state(cfg: Config) -> list[str]:
    problems: list[str] = []
    if cfg.state.replicas_hint < 1:
        problems.append("state.replicas_hint: must be >= 1")
    if cfg.state.backend == "redis" and not cfg.state.redis_url.startswith(("redis://", "rediss://", "unix://")):
        problems.append("state.redis_url: must start with redis://, rediss:// or unix://")
    return problems


def _check_auth(cfg: Config) -> list[str]:
    if cfg.auth.mode != "keys":
        return []
    problems = [] if cfg.auth.keys else ["auth.keys: required when auth.mode is keys"]
    for i, key in enumerate(cfg.auth.keys):
        if not key.key:
            problems.append(f"auth.keys[{i}].key: must not be empty (is its variable set?)")
        unknown = sorted(set(key.passthrough) - STATEFUL_ENDPOINTS)
        if unknown:
            problems.append(f"auth.keys[{i}].passthrough: unknown endpoint families {unknown}; "
                            f"known: {sorted(STATEFUL_ENDPOINTS)}")
    for name, up in cfg.upstreams.items():
        if not up.api_key and not up.forward_client_key:
            problems.append(
                f"upstreams.{name}.api_key: required when auth.mode is keys (the tenants' gateway "
                "keys are never forwarded; set forward_client_key: true to forward them on purpose)"
            )
    return problems


def _check_route(i: int, route: RouteConfig, cfg: Config) -> list[str]:
    problems = []
    if route.upstream not in cfg.upstreams:
        problems.append(f"routes[{i}].upstream: unknown upstream {route.upstream!r}")
    for j, fb in enumerate(route.fallbacks):
        if fb.upstream not in cfg.upstreams:
            problems.append(f"routes[{i}].fallbacks[{j}].upstream: unknown upstream {fb.upstream!r}")
    return problems


def check_url(path: str, url: str) -> list[str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return [f"{path}: must be an http(s) URL, got {url!r}"]
    return []


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _p(path: str) -> str:
    return path or "(root)"


def _tname(value: Any) -> str:
    return "null" if value is None else type(value).__name__
