"""bench.instr_cost's measured process runs end to end without valgrind (a behavioural check: its counts
need valgrind and take ~20 s each, so they are not taken here)."""
from __future__ import annotations

import subprocess

from bench import procs
from bench.instr_cost import _COLLECTED, self_argv


def test_the_measured_process_serves_its_requests_and_exits() -> None:
    """``--serve`` starts the gateway variant, its client sends warm-up and measured requests (each must be
    a 200), and both exit; the control: a variant it does not know fails."""
    mock = procs.start_mock()
    try:
        args = ["--serve", mock.url + "/v1", "--kinds", "small", "--warmup", "2", "--requests", "3"]
        ok = subprocess.run([*self_argv(*args, "--variants", "gw-default")], capture_output=True, text=True,
                            timeout=120, check=False)
        bad = subprocess.run([*self_argv(*args, "--variants", "gw-nope")], capture_output=True, text=True,
                             timeout=120, check=False)
    finally:
        mock.stop()
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert bad.returncode != 0 and "gw-nope" in bad.stderr


def test_the_count_is_read_from_valgrinds_summary() -> None:
    found = _COLLECTED.search("==826== Collected : 270,769,323\n==826== ")
    assert found is not None and int(found.group(1).replace(",", "")) == 270_769_323
    assert _COLLECTED.search("==826== I   refs:      270,769,323") is None
