"""gateway/switching.py: the gateway process asks for a short GIL switch interval."""
from __future__ import annotations

import sys

import pytest

from gateway.switching import SWITCH_INTERVAL_S, share_the_gil


def test_share_the_gil_sets_the_interval_and_returns_the_previous_one() -> None:
    before = sys.getswitchinterval()
    try:
        assert share_the_gil(0.002) == before
        assert sys.getswitchinterval() == pytest.approx(0.002)
        assert share_the_gil() == pytest.approx(0.002)
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
    finally:
        sys.setswitchinterval(before)

