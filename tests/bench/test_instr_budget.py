"""The CI bench check of issue 21 at its own bound: the gateway with the default config runs at most 2x the
bare relay's instructions per request.

CPU time cannot hold a 2x bound here: on CI's two shared cores the same tree reads 1.4x to 2.3x in CPU time
(``test_cpu_budget.py`` keeps a 3x bound for that reason). valgrind's instruction count does not move with
the machine's load (runs of one tree differ by ~1-2%), so the bound can be the issue's own. It is also the
stricter figure: it counts only the processes' own user-space work, not the kernel's socket work both
servers pay alike, which brings the CPU-time ratio nearer 1 (1.93x in instructions read 1.4-1.6x in CPU time
on a quiet machine, ``bench/results/2026-12-07-stop34-bench.md``). Both servers are measured by
``bench.instr_cost`` in process, the gateway writing its request log line as ``gateway serve`` does, each
after a warm-up, on the same unique small chat requests (every one a cache miss that is stored).
"""
from __future__ import annotations

import shutil

import pytest

from bench import instr_cost, procs

BOUND = 2.0
WARMUP = 200
REQUESTS = 200

pytestmark = pytest.mark.skipif(
    shutil.which("valgrind") is None or shutil.which("callgrind_control") is None,
    reason="valgrind is not installed: apt-get install valgrind (see .ci/run)")


def test_default_config_instructions_per_request_within_2x_the_bare_relay() -> None:
    mock = procs.start_mock()
    try:
        counts = {variant: instr_cost.measure(instr_cost.ROOT, mock.url + "/v1", variant, "small", WARMUP,
                                              REQUESTS, log=True)
                  for variant in ("bare", "gw-default")}
    finally:
        mock.stop()
    ratio = counts["gw-default"] / counts["bare"]
    print(f"instructions per request: bare {counts['bare'] / 1000:.1f}k, "
          f"gw-default {counts['gw-default'] / 1000:.1f}k, ratio {ratio:.2f}")
    # positive controls: the relay's own work is what was counted (~670k; not the warm-up, not nothing),
    # and so is the gateway's (it parses, routes, caches and accounts what the relay only copies)
    assert 200_000 < counts["bare"] < 3_000_000
    assert counts["gw-default"] > 1.3 * counts["bare"]
    assert ratio <= BOUND, f"gateway (default config): {ratio:.2f}x the bare relay's instructions per request"
