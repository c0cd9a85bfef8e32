"""Architecture rules, read from the source with ``ast`` (nothing is imported).

(a) the import graph of gateway/ and policies/ has no cycles;
(b) a feature package ``policies/<a>/`` does not reach into another one ``policies/<b>/``,
    except through ``ALLOWED_CROSS_FEATURE``;
(c) the core (gateway/) imports policies only from ``COMPOSITION_ROOT``, or a feature's
    ``policies.<x>.config`` module (config dataclasses).

Imports anywhere in a module count (top level and inside functions); imports under
``if TYPE_CHECKING:`` do not (they never run). ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg``.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "policies")

# (b) Cross-feature imports that are allowed. ``*`` in the importer position means any feature.
#   - policies.<x>.config: every feature's config dataclasses may be read by any module.
#   - policies.tools -> policies.resilience.*: tool routes reuse retries and breakers
#     (the same layer classes).
#   - policies.mcp -> policies.resilience.*, policies.ratelimit.*: MCP servers reuse breakers, backoff,
#     buckets.
ALLOWED_CROSS_FEATURE: tuple[tuple[str, str], ...] = (
    ("*", "policies.{feature}.config"),
    ("policies.tools", "policies.resilience"),
    ("policies.mcp", "policies.resilience"),  # MCP servers reuse the breaker registry and backoff
    ("policies.mcp", "policies.ratelimit"),  # and the memory token buckets for their rpm
)

# (c) The only core modules that may import policies (beyond policies.<x>.config).
COMPOSITION_ROOT: frozenset[str] = frozenset({
    "gateway.app",
    "gateway.cli",
    "gateway.config",
    "gateway.config_model",
    "gateway.telemetry.observability",
})

# Edges allowed to break the rules for now (none: all were fixed). A non-empty list turns the rule test into
# a strict xfail; test_known_offenses_are_exactly_todays fails on any new edge and on any fixed one still
# listed, so these lists only ever shrink.
KNOWN_CYCLES: tuple[tuple[str, ...], ...] = ()  # none today
KNOWN_CROSS_FEATURE: tuple[tuple[str, str], ...] = ()
KNOWN_CORE_TO_POLICIES: tuple[tuple[str, str], ...] = ()

Graph = dict[str, set[str]]


# ---------------------------------------------------------------- the graph

def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node`` except those in ``if TYPE_CHECKING:`` bodies."""
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.orelse:
            yield from _runtime_imports(child)
        return
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
        return
    for child in ast.iter_child_nodes(node):
        yield from _runtime_imports(child)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (``a.b.func`` -> ``a.b``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, source: str, modules: set[str], is_package: bool = False) -> set[str]:
    """The modules of ``modules`` that ``module`` imports at run time."""
    found: set[str] = set()
    for node in _runtime_imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def build_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> Graph:
    files = {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    modules = set(files)
    return {name: imports_of(name, path.read_text(encoding="utf-8"), modules, path.name == "__init__.py")
            for name, path in files.items()}


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # iterative enough for this graph's size; recursion depth = path length
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, set(c)) for c in sorted(components)]


def _cycle_in(graph: Graph, component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth first, inside the component)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ()) & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # unreachable for a real component


def edges(graph: Graph) -> Iterator[tuple[str, str]]:
    for src in sorted(graph):
        for dst in sorted(graph[src]):
            yield src, dst


def feature_of(module: str) -> str | None:
    """``policies.cache.keys`` -> ``policies.cache``; modules directly in policies/ belong to no feature."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "policies" and len(parts) >= 3 else None


def _is_feature_config(module: str) -> bool:
    parts = module.split(".")
    return len(parts) == 3 and parts[0] == "policies" and parts[2] == "config"


def cross_feature_offenses(graph: Graph) -> list[tuple[str, str]]:
    offenses = []
    for src, dst in edges(graph):
        a, b = feature_of(src), feature_of(dst)
        if a is None or b is None or a == b:
            continue
        allowed = any(
            (importer in ("*", a)) and (dst == target.format(feature=b.split(".")[1]) or b == target)
            for importer, target in ALLOWED_CROSS_FEATURE)
        if not allowed:
            offenses.append((src, dst))
    return offenses


def core_offenses(graph: Graph) -> list[tuple[str, str]]:
    return [(src, dst) for src, dst in edges(graph)
            if src.split(".")[0] == "gateway" and dst.split(".")[0] == "policies"
            and src not in COMPOSITION_ROOT and not _is_feature_config(dst)]


def _show(pairs: Iterable[tuple[str, str]]) -> str:
    return "\n".join(f"  {src} -> {dst}" for src, dst in pairs)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph()


# ---------------------------------------------------------------- the rules

def test_the_graph_is_read(graph: Graph) -> None:
    """Sanity: both packages were parsed and edges found, so the rules below are not vacuous."""
    assert "gateway.server" in graph and "policies.registry" in graph
    assert "gateway.chain" in graph["policies.registry"]
    assert sum(len(v) for v in graph.values()) > 100


def _xfail_if(known: tuple, reason: str):  # type: ignore[no-untyped-def]
    if not known:
        return lambda f: f
    return pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason + "\n" + _show(known))


def test_known_offenses_are_exactly_todays(graph: Graph) -> None:
    """The xfail lists are current: no new offending edge hides behind them, and none is stale."""
    assert [tuple(c) for c in find_cycles(graph)] == list(KNOWN_CYCLES)
    assert cross_feature_offenses(graph) == list(KNOWN_CROSS_FEATURE), _show(cross_feature_offenses(graph))
    assert core_offenses(graph) == list(KNOWN_CORE_TO_POLICIES), _show(core_offenses(graph))


@_xfail_if(KNOWN_CYCLES, "known import cycles (KNOWN_CYCLES)")
def test_no_import_cycles(graph: Graph) -> None:
    cycles = find_cycles(graph)
    print("import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles) if cycles else "no cycles")
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


@_xfail_if(KNOWN_CROSS_FEATURE, "known cross-feature imports (KNOWN_CROSS_FEATURE):")
def test_features_do_not_import_each_other(graph: Graph) -> None:
    offenses = cross_feature_offenses(graph)
    print("cross-feature imports:\n" + _show(offenses))
    assert not offenses, "a feature package imports another (allowed: ALLOWED_CROSS_FEATURE):\n" + _show(
        offenses
    )


@_xfail_if(KNOWN_CORE_TO_POLICIES,
           "known core -> policies imports outside the root (KNOWN_CORE_TO_POLICIES):")
def test_core_imports_policies_only_in_the_composition_root(graph: Graph) -> None:
    offenses = core_offenses(graph)
    print("core -> policies imports outside the composition root:\n" + _show(offenses))
    assert not offenses, "core module imports a policy outside COMPOSITION_ROOT:\n" + _show(offenses)


# ---------------------------------------------------------------- positive controls

def test_a_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_imports_are_read_from_source() -> None:
    modules = {"gateway.x", "gateway.y", "gateway.z", "gateway.pkg", "gateway.pkg.m", "gateway.w",
               "gateway.v"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "import gateway.y\n"
        "from gateway.pkg import m\n"
        "from . import v\n"
        "if TYPE_CHECKING:\n"
        "    from gateway import z\n"
        "else:\n"
        "    import os\n"
        "def f():\n"
        "    from gateway.w import something\n"
    )
    assert imports_of("gateway.x", source, modules) == {"gateway.y", "gateway.pkg.m", "gateway.v",
                                                        "gateway.w"}


def test_rules_flag_bad_edges() -> None:
    graph = {
        "policies.cache.keys": {"policies.ratelimit.model", "policies.ratelimit.config", "gateway.chain"},
        "policies.tools.routes": {"policies.resilience.retry_layer", "policies.cache.keys"},
        "gateway.handler": {"policies.cache.keys", "policies.cache.config"},
        "gateway.app": {"policies.registry"},
    }
    assert cross_feature_offenses(graph) == [("policies.cache.keys", "policies.ratelimit.model"),
                                             ("policies.tools.routes", "policies.cache.keys")]
    assert core_offenses(graph) == [("gateway.handler", "policies.cache.keys")]
