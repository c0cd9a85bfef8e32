"""Scripted faults of the mock: ``for_s`` makes an upstream "down for T, then healthy"."""
from __future__ import annotations

import pytest

from gateway.mock.faults import FaultQueue, scripted_fault_from_json


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def take(queue: FaultQueue) -> str | None:
    spec = queue.take(path="/v1/chat/completions", method="POST", model="m", stream=False)
    return None if spec is None else spec.describe()


def test_for_s_entry_expires_after_its_window() -> None:
    clock = Clock()
    queue = FaultQueue(clock)
    queue.extend([scripted_fault_from_json({"fault": "status=503", "times": -1, "for_s": 60})])
    clock.now += 59.9
    assert take(queue) == "status=503" and len(queue) == 1
    assert queue.snapshot()[0]["for_s"] == 60.0
    clock.now += 0.1
    assert take(queue) is None and len(queue) == 0


def test_entry_without_for_s_never_expires() -> None:
    clock = Clock()
    queue = FaultQueue(clock)
    queue.extend([scripted_fault_from_json({"fault": "status=503", "times": -1})])
    clock.now += 1e6
    assert take(queue) == "status=503"


@pytest.mark.parametrize("bad", [0, -1, "5", True])
def test_for_s_must_be_positive_seconds(bad: object) -> None:
    with pytest.raises(ValueError, match="for_s"):
        scripted_fault_from_json({"fault": "status=503", "for_s": bad})
