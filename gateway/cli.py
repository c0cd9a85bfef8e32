"""``gateway serve | check-config | mock-upstream``."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from gateway.config import ConfigError, load_config, resolve_config_path
from gateway.config_model import Config
from gateway.memory_caps import warnings as memory_warnings
from gateway.telemetry.logging import setup_logging
from gateway.workers import WORKER_INDEX_ENV, resolve_workers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible LLM gateway sidecar")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="config file (default: $GATEWAY_CONFIG, else ./config.yaml)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (default: "
                       "server.workers, else the CPUs available to the container, honouring cgroup limits)")
    check = sub.add_parser("check-config", help="validate a config file; exit 2 listing every problem")
    check.add_argument("path")
    health = sub.add_parser("healthcheck",
                            help="exit 0 if the local gateway answers /healthz (container HEALTHCHECK)")
    health.add_argument("--config", help="config file, for server.port (default: $GATEWAY_CONFIG)")
    health.add_argument("--port", type=int)
    mock = sub.add_parser("mock-upstream", help="run the fake OpenAI-compatible provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9000)
    mock.add_argument("--ttft-ms", type=float, default=0.0)
    mock.add_argument("--tokens-per-s", type=float, default=0.0)
    mock.add_argument("--seed", type=int, default=0)
    mock.add_argument("--ttft-sigma", type=float, default=0.0,
                      help="log-normal spread of each answer's TTFT around --ttft-ms (0: exact)")
    mock.add_argument("--advertise-rpm", type=int,
                      help="x-ratelimit-limit-requests with no quota set (default 10000)")
    mock.add_argument("--advertise-tpm", type=int,
                      help="x-ratelimit-limit-tokens with no quota set (default 10M)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path)
    if args.command == "mock-upstream":
        return run_mock_upstream(args)
    if args.command == "healthcheck":
        return healthcheck(args)
    return run_serve(args)


def check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        workers = resolve_workers(None, config.server.workers)
    except ValueError:
        workers = 1
    for warning in memory_warnings(config, workers):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: ok")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as err:
        for problem in err.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return 2
    supervised = os.environ.get(WORKER_INDEX_ENV) is not None  # one of N workers started by the supervisor
    try:
        workers = 1 if supervised else resolve_workers(args.workers, config.server.workers)
    except ValueError as err:
        print(f"config error: server.workers: {err}", file=sys.stderr)
        return 2
    setup_logging(
        os.environ.get("GATEWAY_LOG_LEVEL", config.server.log_level), access_log=config.server.access_log
    )
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    config_path = str(path) if path else None
    _install_uvloop()
    if supervised:
        from gateway.supervisor import bind_to_parent

        bind_to_parent()
        return _serve_one(config, host, port, config_path, reuse_port=True)
    if workers == 1:
        return _serve_one(config, host, port, config_path, reuse_port=False)
    from gateway.supervisor import Supervisor, SupervisorConfig

    stop_timeout = config.server.grace_s + config.server.drain_s + 10.0
    sup = Supervisor(
        SupervisorConfig(
            workers=workers, host=host, port=port, config_path=config_path, stop_timeout_s=stop_timeout,
            host_state=config.state.backend == "memory",
        )
    )
    try:
        return asyncio.run(sup.run())
    except OSError as err:  # the address is taken or not ours to bind
        print(f"cannot listen on {host}:{port}: {err.strerror or err}", file=sys.stderr)
        return 1


def _serve_one(config: Config, host: str, port: int, config_path: str | None, *, reuse_port: bool) -> int:
    from gateway.server import serve

    return asyncio.run(serve(config, host=host, port=port, config_path=config_path, reuse_port=reuse_port))


def healthcheck(args: argparse.Namespace) -> int:
    """GET http://127.0.0.1:<server.port>/healthz; for Docker's HEALTHCHECK (Kubernetes probes over HTTP)."""
    import urllib.request

    port = args.port
    if port is None:
        try:
            port = load_config(resolve_config_path(args.config)).server.port
        except ConfigError:
            port = 8080
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as resp:
            return 0 if resp.status == 200 else 1
    except OSError:
        return 1


def run_mock_upstream(args: argparse.Namespace) -> int:
    from gateway.mock import MockConfig, run_mock

    setup_logging("info")
    pairs = (("advertised_rpm", args.advertise_rpm), ("advertised_tpm", args.advertise_tpm))
    advertised = {name: value for name, value in pairs if value is not None}
    run_mock(
        MockConfig(ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s, seed=args.seed,
                   ttft_sigma=args.ttft_sigma, **advertised), args.host, args.port
    )
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


if __name__ == "__main__":
    sys.exit(main())
