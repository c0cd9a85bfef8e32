"""`make demo`: fake provider + gateway + one streamed answer through the openai SDK.

Starts `gateway mock-upstream` and `gateway serve` as real processes on free
loopback ports, streams one answer through the gateway with the official SDK,
prints where to look (metrics, dashboard), then stops both.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from openai import OpenAI

ADMIN_KEY = "demo-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def main() -> int:
    mock_port, gw_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    config = tmp / "config.yaml"
    config.write_text(f"""
server: {{host: 127.0.0.1, port: {gw_port}, drain_s: 2, grace_s: 0}}
upstreams:
  mock: {{base_url: "http://127.0.0.1:{mock_port}/v1", api_key: demo-upstream-key}}
routes:
  - match: {{model: "*"}}
    upstream: mock
admin: {{api_key: {ADMIN_KEY}}}
ledger: {{sqlite_path: "{tmp}/usage.sqlite3"}}
""")
    gateway = [sys.executable, "-m", "gateway"]
    procs = [
        subprocess.Popen([*gateway, "mock-upstream", "--port", str(mock_port), "--ttft-ms", "150",
                          "--tokens-per-s", "40"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([*gateway, "serve", "--config", str(config)], stdout=subprocess.DEVNULL,
                         stderr=open(tmp / "gateway.log", "wb")),
    ]
    try:
        wait_http(f"http://127.0.0.1:{mock_port}/v1/models")
        wait_http(f"http://127.0.0.1:{gw_port}/readyz")
        client = OpenAI(base_url=f"http://127.0.0.1:{gw_port}/v1", api_key="sk-demo-client")
        print(f"gateway on http://127.0.0.1:{gw_port}/v1 -> fake provider on :{mock_port}\n")
        stream = client.chat.completions.create(
            model="gpt-4o", stream=True, messages=[{"role": "user", "content": "Say hello to the demo."}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print("\n")
        print(f"metrics:   http://127.0.0.1:{gw_port}/metrics")
        print(f"dashboard: http://127.0.0.1:{gw_port}/admin/dashboard?key={ADMIN_KEY}")
        if os.environ.get("DEMO_KEEP"):
            print("DEMO_KEEP set: serving until Ctrl-C")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
