"""``gateway serve | check-config | mock-upstream``."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from gateway.config import ConfigError, load_config, resolve_config_path
from gateway.telemetry.logging import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible LLM gateway sidecar")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="config file (default: $GATEWAY_CONFIG, else ./config.yaml)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (default: 1)")
    check = sub.add_parser("check-config", help="validate a config file; exit 2 listing every problem")
    check.add_argument("path")
    mock = sub.add_parser("mock-upstream", help="run the fake OpenAI-compatible provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9000)
    mock.add_argument("--ttft-ms", type=float, default=0.0)
    mock.add_argument("--tokens-per-s", type=float, default=0.0)
    mock.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path)
    if args.command == "mock-upstream":
        return run_mock_upstream(args)
    return run_serve(args)


def check_config(path: str) -> int:
    try:
        load_config(path)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
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
    setup_logging(os.environ.get("GATEWAY_LOG_LEVEL", config.server.log_level))
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    _install_uvloop()
    from gateway.server import serve

    return asyncio.run(serve(config, host=host, port=port, config_path=str(path) if path else None))


def run_mock_upstream(args: argparse.Namespace) -> int:
    from gateway.mock import MockConfig, run_mock

    setup_logging("info")
    run_mock(MockConfig(ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s, seed=args.seed), args.host, args.port)
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


if __name__ == "__main__":
    sys.exit(main())
