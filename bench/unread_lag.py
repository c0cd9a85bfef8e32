"""Event-loop lag of a gateway relaying issue 15's unread streams: ``python -m bench.unread_lag``.

A gateway in this process (the default config: usage hidden, exact cache, coalescing) in front of the fake
provider (another process); a client process opens ``--streams`` deterministic streams of ``--tokens``
tokens (15,000: 4.4 MB each with OpenAI's padding) and never reads them. A timer in the gateway's loop
asks to run every millisecond and records how late it ran: how long any other request's next step would
have waited. Printed: the lag's p99 / p99.9 / max and how many ticks were over 5 ms late, over a
``--seconds`` window from the first request (the relay and some idle time after it), and the process's
CPU. With ``--baseline TREE`` that tree is measured too, alternately, each in its own child process
(``--rounds`` each); ``--variant def-nocache`` and the like leave features out.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

_CLIENT = r"""
import socket, sys, time
port, n, tokens, hold = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
socks = []
for i in range(n):
    body = ('{"model":"gpt-4o","temperature":0,"stream":true,"max_tokens":50000,'
            '"messages":[{"role":"user","content":"unread %d %f"}]}' % (i, time.time())).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer sk-x\r\nx-mock-tokens: " + tokens.encode() +
              b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    socks.append(s)
time.sleep(hold)
for s in socks:
    s.close()
"""


async def measure(streams: int, tokens: int, seconds: float, variant: str) -> dict[str, float]:
    from bench import procs
    from bench.scenarios import GATEWAYS, gateway_config
    from tests.support.servers import start_gateway

    mock = procs.start_mock()
    gw = await start_gateway(gateway_config(mock.url + "/v1", GATEWAYS[variant]))
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    due = [time.monotonic() + 0.001]  # not loop.time(): uvloop's has a millisecond grain

    def tick() -> None:
        now = time.monotonic()
        lags.append(max(now - due[0], 0.0))
        due[0] = now + 0.001
        loop.call_later(0.001, tick)

    try:
        port = int(gw.url.rsplit(":", 1)[1])
        cpu0, start = time.process_time(), time.monotonic()
        client = await asyncio.create_subprocess_exec(sys.executable, "-c", _CLIENT, str(port),
                                                      str(streams), str(tokens), str(seconds))
        loop.call_later(0.001, tick)
        await client.wait()
        elapsed, cpu = time.monotonic() - start, time.process_time() - cpu0
    finally:
        await gw.close()
        mock.stop()
    lags.sort()
    return {"lag_p99_ms": lags[int(len(lags) * 0.99)] * 1e3,
            "lag_p999_ms": lags[int(len(lags) * 0.999)] * 1e3, "lag_max_ms": lags[-1] * 1e3,
            "late_5ms": float(sum(lag > 0.005 for lag in lags)), "ticks": float(len(lags)),
            "window_s": elapsed, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=15_000)
    parser.add_argument("--seconds", type=float, default=3.0, help="how long the client holds its streams")
    parser.add_argument("--baseline", help="another source tree, measured alternately")
    parser.add_argument("--variant", default="gw-default", help="a gateway variant of bench.scenarios")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        print(repr(uvloop.run(measure(args.streams, args.tokens, args.seconds, args.variant))))
        return
    trees = {"this": str(Path.cwd())} | ({"base": args.baseline} if args.baseline else {})
    script = str(Path(__file__).resolve())
    for round_no in range(args.rounds):
        for name, tree in trees.items():
            argv = [sys.executable, script, "--child", "--streams", str(args.streams),
                    "--tokens", str(args.tokens), "--seconds", str(args.seconds), "--variant", args.variant]
            out = subprocess.run(argv,
                                 cwd=tree, env={**os.environ, "PYTHONPATH": tree}, check=True,
                                 capture_output=True, text=True).stdout
            fig = eval(out.strip().splitlines()[-1])  # noqa: S307  our own child's repr of floats
            load = os.getloadavg()[0]
            print(f"round {round_no} {name:5s} load {load:4.1f}  "
                  + "  ".join(f"{k}={v:.2f}" for k, v in fig.items()), flush=True)


if __name__ == "__main__":
    main()
