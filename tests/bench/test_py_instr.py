"""bench.py_instr's trampolines pass calls through unchanged (a behavioural check: counts need valgrind)."""
from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.py_instr import per_function, wrapped


@pytest.fixture
def tramps(tmp_path: Path) -> Any:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    from bench.py_instr import _MODULE, build_trampolines

    build_trampolines(tmp_path, 4)
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(_MODULE)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(_MODULE, None)


def add(a: int, b: int = 0) -> int:
    if a < 0:
        raise ValueError("negative")
    return a + b


async def later(a: int) -> int:
    import asyncio

    await asyncio.sleep(0)  # resumed once more through the trampoline
    if a < 0:
        raise ValueError("negative")
    return a * 2


async def test_a_wrapped_function_and_coroutine_answer_and_raise_as_before(tramps: Any) -> None:
    plain, resumed = wrapped(add, tramps.T000), wrapped(later, tramps.T001)
    assert plain(2, b=3) == 5 and await resumed(4) == 8
    with pytest.raises(ValueError, match="negative"):
        plain(-1)
    with pytest.raises(ValueError, match="negative"):
        await resumed(-1)
    assert plain.__name__ == "add" and resumed.__name__ == "later"


def test_each_trampolines_inclusive_count_is_read_per_request() -> None:
    text = ("   1,200,000 (12.0%)  ???:T001 [/tmp/x/py_instr_tramp.so]\n"
            "     400,000 ( 4.0%)  ???:T000 [/tmp/x/py_instr_tramp.so]\n"
            "     900,000 ( 9.0%)  ???:T007 [/tmp/x/py_instr_tramp.so]\n")  # not a named function: left out
    assert per_function(text, ["m:f", "m:g"], 400) == [(3000.0, "m:g"), (1000.0, "m:f")]
