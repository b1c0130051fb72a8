"""The shape of the package holds (issue 20): the pure layers do no I/O and read no
clock, and nothing grows past the sizes README's "How it is built" states.

Read from the source: a pure module imports none of threading, time, asyncio,
serial, socket, sqlite3 or os (nor select, subprocess, signal), directly or
through any estim module it imports, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .test_imports import graph
from .vectors import ROOT

SRC = ROOT / "src" / "estim"

#: the layers that decide: bytes, events, time and requests in, what to do out
PURE = [
    "estim.protocol",
    "estim.protocol.cobs",
    "estim.protocol.constants",
    "estim.protocol.fields",
    "estim.protocol.frame",
    "estim.protocol.host",
    "estim.protocol.messages",
    "estim.core",
    "estim.policy",
    "estim.policy_base",
    "estim.start_sequence",
    "estim.live_loop",
    "estim.unit_reports",
    "estim.pending",
    "estim.recorder",
    "estim.session_state",
    "estim.steps",
    "estim.limits",
    "estim.safety",
    "estim.bounds",
    "estim.plan",
    "estim.durations",
    "estim.info",
    "estim.errors",
    "estim.refusals",
    "estim.record",
]
FORBIDDEN = {
    "threading",
    "time",
    "asyncio",
    "serial",
    "socket",
    "sqlite3",
    "os",
    "select",
    "subprocess",
    "signal",
}

#: the limits README's "How it is built" states (h11's Connection, the anchor, is
#: 509 lines and 22 methods)
MODULE_LINES = 650
CLASS_LINES = 500
CLASS_METHODS = 30
FUNCTION_LINES = 220


def _stdlib_imports(module: str) -> set[str]:
    parts = module.split(".")
    path = SRC.parent.joinpath(*parts)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def closure(module: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = {module}, [module]
    while todo:
        for dep in edges.get(todo.pop(), set()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


@pytest.mark.parametrize("module", PURE)
def test_a_pure_layer_does_no_io_and_reads_no_clock(module: str) -> None:
    edges = graph()
    bad = {
        f"{m} imports {name}"
        for m in sorted(closure(module, edges))
        for name in _stdlib_imports(m) & FORBIDDEN
    }
    assert bad == set()


def _sizes() -> list[tuple[str, str, int, int]]:
    """(where, what, lines, methods) of every module, class and top-level function."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        where = str(path.relative_to(ROOT))
        out.append((where, "module", len(text.splitlines()), 0))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                methods = sum(
                    isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in node.body
                )
                out.append(
                    (where, f"class {node.name}", node.end_lineno - node.lineno + 1, methods)  # type: ignore[operator]
                )
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.col_offset == 0:
                out.append(
                    (where, f"function {node.name}", node.end_lineno - node.lineno + 1, 0)  # type: ignore[operator]
                )
    return out


def test_nothing_grows_past_the_stated_sizes() -> None:
    too_big = []
    for where, what, lines, methods in _sizes():
        if what == "module":
            limit = MODULE_LINES
        elif what.startswith("class"):
            limit = CLASS_LINES
        else:
            limit = FUNCTION_LINES
        if lines > limit:
            too_big.append(f"{where} {what}: {lines} lines (limit {limit})")
        if methods > CLASS_METHODS:
            too_big.append(f"{where} {what}: {methods} methods (limit {CLASS_METHODS})")
    assert too_big == []


def test_the_limits_are_the_ones_readme_states() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    stated = (
        f"a module at most {MODULE_LINES} lines, a class at most {CLASS_LINES} lines and "
        f"{CLASS_METHODS} methods, a function at most {FUNCTION_LINES} lines"
    )
    assert stated in " ".join(readme.split())


def test_the_largest_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """For the closing note and README: the largest module, class and function."""
    sizes = _sizes()
    for kind in ("module", "class", "function"):
        where, what, lines, methods = max(
            (s for s in sizes if s[1].startswith(kind)), key=lambda s: s[2]
        )
        print(
            f"largest {kind}: {where} {what}, {lines} lines"
            + (f", {methods} methods" if methods else "")
        )
    assert Path(SRC).is_dir()
