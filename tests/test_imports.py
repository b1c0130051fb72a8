"""The shape of the package (issue 10): no import cycles, and the driver never
imports the simulator. Read from the source, counting every import for cycles: at
module level, inside functions (taken later) and under ``if TYPE_CHECKING:`` (a
type's dependency is a dependency). The driver check counts what is taken when
the driver is imported."""

from __future__ import annotations

import ast
from pathlib import Path

from .vectors import ROOT

SRC = ROOT / "src"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, *, at_import_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:
        if at_import_only and (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            or (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))
        ):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                found |= {a.name for a in sub.names}
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - sub.level + 1])
                    base = f"{base}.{sub.module}" if sub.module else base
                found.add(base)
                found |= {f"{base}.{a.name}" for a in sub.names}
    return found


def graph(*, at_import_only: bool = False) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {
        name: {m for m in _imports(p, name, at_import_only=at_import_only) if m in modules} - {name}
        for name, p in modules.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_there_are_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_driver_never_imports_the_simulator() -> None:
    edges = graph(at_import_only=True)
    for driver in ("estim.device", "estim.aio", "estim.core", "estim.policy", "estim.ports"):
        seen: set[str] = set()
        todo = [driver]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo += edges.get(module, set())
        assert not [m for m in seen if m.startswith("estim.sim")], driver
