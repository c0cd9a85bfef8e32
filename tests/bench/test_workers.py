"""bench.workers: runs in which the shared state backend tripped are flagged and kept out of the medians."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import procs, workers


def row(cpu_ms: float, trips: int, redis_ms: float = 0.0) -> dict[str, float]:
    return {"rps": 1000.0, "cpu_ms": cpu_ms, "redis_ms": redis_ms, "p50_ms": 5.0, "errors": 0.0,
            "trips": float(trips)}


def test_tripped_runs_are_left_out_of_the_medians() -> None:
    summary = workers.summarise([row(0.60, 0), row(0.40, 2), row(0.62, 0)])
    assert summary["cpu_ms"] == 0.61  # the tripped run's 0.40 ms (Redis skipped) is not the figure
    assert (summary["tripped"], summary["runs"]) == (1, 3)
    every = workers.summarise([row(0.40, 1), row(0.50, 1)])
    assert every["cpu_ms"] == 0.45 and every["tripped"] == 2  # nothing clean: all kept, and said so


def test_trips_are_counted_from_the_servers_log(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_bytes(b'{"msg":"state backend down"}\n')
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    server = procs.Server(name="gw", proc=proc, port=1, log_path=log, tmpdir=tmp_path)
    start = workers._log_size(server)
    assert workers._trips(server, 0) == 1  # control: the line is found
    with log.open("ab") as out:
        out.write(b'{"msg":"request"}\n{"msg":"state backend down"}\n{"msg":"state backend up"}\n')
    assert workers._trips(server, start) == 1  # only what the run wrote


def test_the_report_says_which_runs_tripped() -> None:
    results = {"local-1w": workers.summarise([row(0.5, 0)]),
               "host-1w": workers.summarise([row(0.55, 0, 0.02), row(0.45, 1)])}
    text = workers.render(results, "python -m bench.workers", 2, 3.0)
    assert "| host-1w | 0.550 | 0.020 | 1.10x |" in text and "1 of 2 |" in text  # Redis's own share too
    assert "left out of the medians" in text
    quiet = workers.render({"local-1w": workers.summarise([row(0.5, 0)])}, "cmd", 1, 3.0)
    assert "left out of the medians" not in quiet


def test_the_report_separates_sharing_from_the_second_process() -> None:
    results = {"local-1w": workers.summarise([row(0.40, 0)]),
               "host-2w": workers.summarise([row(0.52, 0)]),
               "local-2w": workers.summarise([row(0.50, 0)])}
    text = workers.render(results, "cmd", 1, 3.0)
    assert "| local-2w | 0.500 |" in text and "1.25x" in text
    assert "At 2 workers, sharing the state costs +4% CPU per request" in text
    alone = workers.render({k: v for k, v in results.items() if k != "local-2w"}, "cmd", 1, 3.0)
    assert "At 2 workers" not in alone  # control: no local-2w, no comparison


def test_local_2w_leaves_the_supervisor_no_redis_to_start() -> None:
    from gateway.state.host_state import redis_binary

    assert redis_binary({"GATEWAY_REDIS_SERVER": workers.NO_REDIS_BINARY}) is None
    assert redis_binary({}) is not None  # control: this machine has one (the host-state extra)
