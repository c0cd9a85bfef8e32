"""Instructions per request spent in named Python functions, inclusive, counted by valgrind (callgrind).

``bench.instr_cost`` gives one figure per request; callgrind alone cannot say which Python function spent it
(CPython 3.11 runs every Python function inside one C function, ``_PyEval_EvalFrameDefault``). This tool
calls each named function through a C trampoline of its own (``T000``, ``T001``... in a small extension
built here with the system's C compiler), so callgrind's inclusive cost of ``T007`` is what the 7th
function and everything it called spent. A coroutine function is driven through its trampoline at each
resumption (each ``send``), so its figure is the work of its own frames while they ran.

    python -m bench.py_instr --variant gw-default \\
        --functions gateway.handler:build_exchange,gateway.telemetry.live:LiveStats.record

Each wrapped call costs ~1.5k instructions of its own (the wrapper, the trampoline), counted in the
function's figure and in every wrapped caller's: name functions that do not nest much, or subtract. Needs
``valgrind`` and a C compiler with the Python headers; ~30 s per run.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTIONS = 64
_MODULE = "py_instr_tramp"
_ROW = re.compile(r"^\s*([\d,]+) \([^)]*\)\s+.*:(T\d{3}) ")


def trampoline_source(n: int) -> str:
    """C source of ``n`` trampolines ``T000(f, args, kwargs)``, each calling ``f`` and nothing else."""
    lines = ["#define PY_SSIZE_T_CLEAN", "#include <Python.h>"]
    for i in range(n):
        lines.append(
            f"__attribute__((noinline)) static PyObject *T{i:03d}(PyObject *self, PyObject *args) {{"
            " PyObject *kw = PyTuple_GET_ITEM(args, 2);"
            " PyObject *out = PyObject_Call(PyTuple_GET_ITEM(args, 0), PyTuple_GET_ITEM(args, 1),"
            " kw == Py_None ? NULL : kw); __asm__ volatile(\"\"); return out; }")
    lines.append("static PyMethodDef methods[] = {")
    lines += [f'{{"T{i:03d}", T{i:03d}, METH_VARARGS, NULL}},' for i in range(n)]
    lines.append("{NULL, NULL, 0, NULL}};")
    lines.append(f'static struct PyModuleDef def = {{PyModuleDef_HEAD_INIT, "{_MODULE}", NULL, -1, '
                 'methods};')
    lines.append(f"PyMODINIT_FUNC PyInit_{_MODULE}(void) {{ return PyModule_Create(&def); }}")
    return "\n".join(lines)


def build_trampolines(folder: Path, n: int = MAX_FUNCTIONS) -> None:
    """Compile the extension into ``folder`` (put on ``sys.path`` to import it)."""
    source = folder / f"{_MODULE}.c"
    source.write_text(trampoline_source(n))
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = folder / (_MODULE + suffix)
    subprocess.run(["cc", "-O1", "-fno-inline", "-fno-optimize-sibling-calls", "-shared", "-fPIC",
                    f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(target)], check=True)


class _Driven:
    """A coroutine resumed through a trampoline: each ``send`` and ``throw`` is counted under it."""

    __slots__ = ("coro", "tramp")

    def __init__(self, coro: Coroutine[Any, Any, Any], tramp: Callable[..., Any]) -> None:
        self.coro, self.tramp = coro, tramp

    def __await__(self) -> Generator[Any, Any, Any]:
        return self

    def __iter__(self) -> _Driven:
        return self

    def __next__(self) -> Any:
        return self.tramp(self.coro.send, (None,), None)

    def send(self, value: Any) -> Any:
        return self.tramp(self.coro.send, (value,), None)

    def throw(self, *exc: Any) -> Any:
        return self.tramp(self.coro.throw, exc, None)

    def close(self) -> None:
        self.coro.close()


def wrapped(func: Callable[..., Any], tramp: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` called (or, a coroutine function, resumed) through ``tramp``."""
    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def resumed(*args: Any, **kwargs: Any) -> Any:
            return await _Driven(func(*args, **kwargs), tramp)

        return resumed

    @functools.wraps(func)
    def called(*args: Any, **kwargs: Any) -> Any:
        return tramp(func, args, kwargs or None)

    return called


def install(spec: str, tramp: Callable[..., Any]) -> None:
    """Route ``module:qualname`` (a function, or a class's method) through ``tramp``: on its class, or in
    every loaded module of the project that holds the function under a name."""
    module_name, qualname = spec.split(":")
    owner: Any = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    raw = inspect.getattr_static(owner, name)
    func = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
    if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func) or not inspect.isfunction(func):
        raise SystemExit(f"{spec}: not a plain function or coroutine function")
    replacement: Any = wrapped(func, tramp)
    if isinstance(raw, staticmethod):
        replacement = staticmethod(replacement)
    elif isinstance(raw, classmethod):
        replacement = classmethod(replacement)
    if path:
        setattr(owner, name, replacement)
        return
    for module in list(sys.modules.values()):
        if isinstance(module, ModuleType) and module.__name__.startswith(("gateway", "policies", "bench")):
            for key, value in list(vars(module).items()):
                if value is func:
                    setattr(module, key, replacement)


def serve(upstream: str, variant: str, functions: list[str], warmup: int, n: int, folder: str) -> None:
    """The measured process (under valgrind): the functions wrapped, then ``bench.instr_cost``'s serve."""
    import uvloop

    from bench import instr_cost
    from gateway.telemetry.logging import setup_logging

    sys.path.insert(0, folder)
    tramps = importlib.import_module(_MODULE)
    importlib.import_module("gateway.app")  # everything a request reaches, loaded before the patching
    for i, spec in enumerate(functions):
        install(spec, getattr(tramps, f"T{i:03d}"))
    setup_logging("info", stream=open(os.devnull, "w"))  # noqa: SIM115 (the request log line, as serve writes it)
    uvloop.run(instr_cost.serve(upstream, variant, "small", warmup, n))


def per_function(annotated: str, functions: list[str], n: int) -> list[tuple[float, str]]:
    """(instructions per request, function) from ``callgrind_annotate --inclusive=yes``'s text."""
    rows = []
    for line in annotated.splitlines():
        found = _ROW.match(line)
        if found is not None:
            i = int(found.group(2)[1:])
            if i < len(functions):
                rows.append((int(found.group(1).replace(",", "")) / n, functions[i]))
    return sorted(rows, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="gw-default", help="a gateway variant of bench.scenarios")
    parser.add_argument("--functions", required=True, help="module:qualname, comma-separated")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)  # upstream, trampolines' folder
    args = parser.parse_args()
    functions = args.functions.split(",")
    if len(functions) > MAX_FUNCTIONS:
        raise SystemExit(f"at most {MAX_FUNCTIONS} functions")
    if args.serve:
        serve(args.serve[0], args.variant, functions, args.warmup, args.requests, args.serve[1])
        return
    from bench import procs

    with tempfile.TemporaryDirectory() as folder:
        build_trampolines(Path(folder))
        out = Path(folder) / "callgrind.out"
        mock = procs.start_mock()
        try:
            seed = os.environ.get("PYTHONHASHSEED", "0")  # as bench.instr_cost: one hash seed, repeatable
            env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed}
            run = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                  f"--callgrind-out-file={out}", sys.executable, "-m", "bench.py_instr",
                                  *sys.argv[1:], "--serve", mock.url + "/v1", folder],
                                 cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        finally:
            mock.stop()
        if run.returncode != 0 or not out.exists():
            raise SystemExit(run.stderr[-2000:])
        annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
                                   capture_output=True, text=True, check=True).stdout
    for count, name in per_function(annotated, functions, args.requests):
        print(f"{count / 1000:9.1f}k  {name}")


if __name__ == "__main__":
    main()
