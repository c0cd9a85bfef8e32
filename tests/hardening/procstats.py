"""What a process holds, read from ``/proc`` (Linux): memory, files, sockets by TCP state.

Used by the overload, drain and soak suites to prove that resources stay bounded and that no
socket is left half-closed (``CLOSE_WAIT``: the peer closed, we never did, a leak by definition).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}


@dataclass(frozen=True, slots=True)
class Socket:
    state: str
    local_port: int
    remote_port: int


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_sockets(pid: int) -> list[Socket]:
    """The TCP sockets (v4 and v6) this process has open, with their state."""
    mine = socket_inodes(pid)
    out = []
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[9] in mine:
                out.append(Socket(TCP_STATES.get(parts[3], parts[3]), int(parts[1].rsplit(":", 1)[1], 16),
                                  int(parts[2].rsplit(":", 1)[1], 16)))
    return out


def close_wait(pid: int) -> int:
    return sum(1 for s in tcp_sockets(pid) if s.state == "CLOSE_WAIT")


def connections_to(pid: int, port: int) -> int:
    """Established connections from this process to ``port`` (its pool towards one upstream)."""
    return sum(1 for s in tcp_sockets(pid) if s.state == "ESTABLISHED" and s.remote_port == port)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
