"""Peer gateways for the comparison columns: LiteLLM's proxy and the Portkey gateway, when installed.

``make bench-peers`` installs them into ``bench/peers/`` (git-ignored): LiteLLM's proxy in its own
virtualenv (``bench/peers/litellm``), the Portkey gateway with npm (``bench/peers/portkey``). When a
peer is not installed its column is skipped, as nginx's is. Both run fully offline against the same
fake provider as every other target:

- LiteLLM: one worker, ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (no cost map download at start), a
  catch-all model pointing at the mock, the bench's client key as master key, and
  ``forward_client_headers_to_llm_api`` so the mock's ``x-mock-*`` fault headers reach it.
- Portkey: ``build/start-server.js --headless``; the provider and the mock's address are request
  headers (``x-portkey-provider``, ``x-portkey-custom-host``), the fault headers are listed in
  ``x-portkey-forward-headers``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from bench import procs
from bench.scenarios import HEADERS

PEERS_DIR = procs.ROOT / "bench" / "peers"
LITELLM_BIN = PEERS_DIR / "litellm" / ".venv" / "bin" / "litellm"
PORTKEY_SERVER = PEERS_DIR / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build" / \
    "start-server.js"
PEERS = ("portkey", "litellm")
MOCK_HEADERS = ("x-mock-fault", "x-mock-tokens")


def installed(name: str) -> bool:
    return (LITELLM_BIN if name == "litellm" else PORTKEY_SERVER).exists()


def start(name: str, upstream_url: str) -> procs.Server | None:
    """The peer ``name`` relaying to ``upstream_url`` (the mock's root), or None when not installed."""
    if not installed(name):
        return None
    return _start_litellm(upstream_url) if name == "litellm" else _start_portkey()


def request_headers(name: str, headers: dict[str, str], upstream_url: str) -> dict[str, str]:
    """``headers`` as the peer needs them to reach the mock with the scenario's fault headers."""
    if name == "litellm":
        return headers
    if name == "portkey":
        forward = ",".join(k for k in headers if k.lower() in MOCK_HEADERS)
        extra = {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream_url + "/v1"}
        return {**headers, **extra, **({"x-portkey-forward-headers": forward} if forward else {})}
    return headers


def _start_litellm(upstream_url: str) -> procs.Server:
    port = procs.free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-litellm-cfg-"))
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "*", "litellm_params": {
            "model": "openai/*", "api_base": upstream_url + "/v1", "api_key": "sk-upstream-secret"}}],
        "litellm_settings": {"drop_params": True, "telemetry": False},
        # the bench's key; x-* headers (the mock's faults) forwarded to the provider
        "general_settings": {"master_key": HEADERS["Authorization"].removeprefix("Bearer "),
                             "forward_client_headers_to_llm_api": True},
    }))
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "true",
           "PYTHONPATH": ""}
    server = procs._spawn("litellm", [str(LITELLM_BIN), "--config", str(cfg), "--host", "127.0.0.1", "--port",
                                      str(port), "--num_workers", "1"], port, env=env)
    procs.wait_http(server, "/health/liveliness", timeout=180.0)
    return server


def _start_portkey() -> procs.Server:
    port = procs.free_port()
    server = procs._spawn("portkey", ["node", str(PORTKEY_SERVER), "--headless", f"--port={port}"], port,
                          env={"NODE_ENV": "production", "PATH": os.environ.get("PATH", "")})
    procs.wait_http(server, "/", timeout=60.0)
    return server
