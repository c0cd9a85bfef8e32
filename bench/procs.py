"""The processes a benchmark measures: mock provider, nginx, bare relay, lean relay, gateway.

Each server runs in its own process so its CPU time can be read from ``/proc``
(scheduler nanoseconds summed over all threads of the process and of its
children, so ``--workers N`` is counted whole) and so the load generator never
shares an interpreter with what it measures. nginx is optional: when the binary
is missing, ``start_nginx`` returns None and the harness skips that column.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.scenarios import UPSTREAM_RPM, UPSTREAM_TPM

ROOT = Path(__file__).resolve().parents[1]
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A started server process; ``url`` is its root (no trailing slash)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    tmpdir: Path
    stop_signal: int = signal.SIGTERM
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _spawn(name: str, argv: list[str], port: int, env: dict[str, str] | None = None,
           stop_signal: int = signal.SIGTERM) -> Server:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    log_path = tmp / "server.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        argv,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=str(tmp),
        stdin=subprocess.DEVNULL,
    )
    return Server(name=name, proc=proc, port=port, log_path=log_path, tmpdir=tmp, stop_signal=stop_signal)


def wait_http(server: Server, path: str, timeout: float = 30.0) -> None:
    """Poll until ``path`` answers (any HTTP status counts as up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited early:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + path, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{server.name} not up after {timeout}s:\n{server.log_tail()}")


def start_mock(ttft_ms: float = 0.0) -> Server:
    """The fake provider; its rate-limit headers advertise the limits the bench's configs name."""
    port = free_port()
    server = _spawn("mock", [sys.executable, "-m", "gateway", "mock-upstream", "--host", "127.0.0.1",
                             "--port", str(port), "--ttft-ms", str(ttft_ms), "--advertise-rpm",
                             str(UPSTREAM_RPM), "--advertise-tpm", str(UPSTREAM_TPM)], port)
    wait_http(server, "/v1/models")
    return server


def start_bare(upstream_url: str) -> Server:
    port = free_port()
    server = _spawn(
        "bare",
        [sys.executable, "-m", "bench.bare_relay", "--upstream", upstream_url, "--port", str(port)],
        port,
        env={"PYTHONPATH": str(ROOT)},
    )
    wait_http(server, "/_bare/health")
    return server


def start_lean(upstream_url: str, server: str = "raw", client: str = "raw", name: str = "lean",
               parser: str = "aiohttp", extra_path: str | None = None) -> Server:
    """``bench.lean_relay`` with the given server and client halves (``raw`` or ``aiohttp``); ``extra_path``:
    a site-packages appended to its ``PYTHONPATH`` (httptools for ``parser="httptools"``)."""
    port = free_port()
    proc = _spawn(
        name,
        [sys.executable, "-m", "bench.lean_relay", "--upstream", upstream_url, "--port", str(port),
         "--server", server, "--client", client, "--parser", parser],
        port,
        env={"PYTHONPATH": str(ROOT) + (f":{extra_path}" if extra_path else "")},
    )
    wait_http(proc, "/_bare/health")
    return proc


def start_gateway(name: str, config: dict[str, Any], workers: int | None = None,
                  source_tree: str | None = None, env: dict[str, str] | None = None) -> Server:
    """``gateway serve`` on a config dict; its JSON log (one line per request) goes to a file.

    ``source_tree``: run the gateway from another copy of the code
    (a baseline checkout) instead. """
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-cfg-"))
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(cfg_path), "--host", "127.0.0.1",
            "--port", str(port)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    extra = {**(env or {}), **({"PYTHONPATH": source_tree} if source_tree else {})}
    server = _spawn(name, argv, port, env=extra or None)
    server.meta["config"] = config
    wait_http(server, "/readyz", timeout=120.0)  # a busy shared machine can take a while to import everything
    _wait_ready(server, timeout=120.0)
    return server


def _wait_ready(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(server.url + "/readyz", timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{server.name} never ready:\n{server.log_tail()}")


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  client_max_body_size 64m;
  client_body_buffer_size 1m;
  keepalive_requests 1000000;
  upstream mock {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    location /static/ {{ default_type application/json; return 200 '{static}'; }}
    location / {{
      proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off; proxy_request_buffering off;
    }}
  }}
}}
"""


def nginx_binary() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def start_nginx(upstream_url: str, static_body: bytes) -> Server | None:
    """nginx as the physical limit: ``/static/...`` answers a fixed completion, anything else proxies."""
    binary = nginx_binary()
    if binary is None:
        return None
    port = free_port()
    upstream_port = int(upstream_url.rsplit(":", 1)[1].split("/")[0])
    tmp = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, upstream_port=upstream_port,
                                      static=static_body.decode().replace("'", "\\'")))
    server = _spawn("nginx", [binary, "-c", str(conf), "-p", str(tmp)], port, stop_signal=signal.SIGQUIT)
    wait_http(server, "/static/health")
    return server


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (worker processes of a supervisor)."""
    found = [pid]
    i = 0
    while i < len(found):
        p = found[i]
        for task in _listdir(f"/proc/{p}/task"):
            for child in _read(f"/proc/{p}/task/{task}/children").split():
                found.append(int(child))
        i += 1
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time of the process tree so far: scheduler ns of every thread (10 ms ticks as a fallback)."""
    total = 0.0
    for p in descendants(pid):
        threads = _listdir(f"/proc/{p}/task")
        ns = [_read(f"/proc/{p}/task/{t}/schedstat").split()[:1] for t in threads]
        if ns and all(ns):
            total += sum(int(v[0]) for v in ns) / 1e9
        else:
            fields = _read(f"/proc/{p}/stat").rsplit(")", 1)[-1].split()
            if len(fields) > 12:
                total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


def rss_bytes(pid: int) -> int:
    """Resident memory of the process tree (VmRSS summed)."""
    total = 0
    for p in descendants(pid):
        for line in _read(f"/proc/{p}/status").splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
