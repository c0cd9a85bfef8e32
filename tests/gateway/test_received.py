"""A large body received into one pre-faulted buffer: the same bytes as its pieces joined, bounded by the
declared length, its pages touched by ``prefault`` without the GIL."""
from __future__ import annotations

import resource
import threading

import pytest

from gateway.received import ReceiveBudget, Received, prefault


def test_pieces_copied_in_come_out_as_the_joined_bytes() -> None:
    pieces = [bytes([i]) * (1000 + i) for i in range(50)]
    received = Received(sum(map(len, pieces)))
    assert all(received.add(piece) for piece in pieces)
    assert received.take() == b"".join(pieces)
    assert received.buffer.closed  # unmapped once taken


def test_a_piece_past_the_declared_length_is_refused_and_not_copied() -> None:
    received = Received(10)
    assert received.add(b"12345678")
    assert not received.add(b"abc")  # 11 > 10
    assert received.add(b"90")  # control: what fits still goes in
    assert received.take() == b"1234567890"


def test_a_short_body_gives_what_arrived() -> None:
    received = Received(1 << 20)
    received.add(b"only this")
    assert received.take() == b"only this"


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


@pytest.mark.skipif(not hasattr(resource, "RUSAGE_THREAD"), reason="per-thread fault counts are Linux's")
def test_after_prefault_the_copies_fault_nothing() -> None:
    """The copies into a prefaulted buffer take (almost) no page fault on the copying thread; into a fresh
    one each 4 KiB page faults (control)."""
    size, piece = 8 << 20, b"x" * (256 << 10)
    fresh = Received(size)
    before = _faults()
    while fresh.add(piece):
        pass
    fresh_faults = _faults() - before
    touched = Received(size)
    worker = threading.Thread(target=prefault, args=(touched,))
    worker.start()
    worker.join()
    before = _faults()
    while touched.add(piece):
        pass
    assert _faults() - before < 64 < size // 4096 // 2 < fresh_faults
    assert touched.take() == piece * (size // len(piece))
    fresh.take()


def test_the_receive_budget_bounds_the_bytes_held_at_once() -> None:
    """``ReceiveBudget``: what is taken is held until given back; past the limit nothing is taken (the body
    is then received in pieces). Control: after a give, the same size fits again."""
    budget = ReceiveBudget(limit=10)
    assert budget.take(6) and budget.held == 6
    assert not budget.take(5) and budget.held == 6  # 11 > 10: refused, nothing held for it
    assert budget.take(4) and budget.held == 10
    budget.give(6)
    assert budget.take(5) and budget.held == 9
