"""The Python examples in README.md run as written."""

from __future__ import annotations

import re

import pytest

from .vectors import ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def test_readme_has_examples() -> None:
    assert BLOCKS


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str) -> None:
    exec(compile(code, "README.md", "exec"), {})


def test_every_simulator_log_kind_is_in_readme_s_table() -> None:
    """README's table of ``estim simulate --json`` kinds and keys is what the unit logs
    (the C unit's README follows it too): every ``self._log(t, "kind", key=...)`` call
    in the simulator's modules."""
    import ast

    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- simulator-log:start -->")[1].split("<!-- simulator-log:end -->")[0]
    documented = {
        kind: set(re.findall(r"`(\w+)`", keys))
        for kind, keys in re.findall(r"^\| `(\w+)` \|([^|]*)\|", table, re.MULTILINE)
    }
    trees = [ast.parse(path.read_text()) for path in (ROOT / "src" / "estim" / "sim").glob("*.py")]
    logged = {
        node.args[1].value: {k.arg for k in node.keywords if k.arg}
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "_log"
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
    }
    assert len(logged) >= 12
    assert logged == documented
