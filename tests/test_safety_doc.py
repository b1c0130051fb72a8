"""docs/SAFETY.md cannot drift from the code: every test it names exists and is
one pytest collects, every ``estim.`` name it gives resolves, every C function of
the reference unit it names is defined there, and every PROTOCOL.md section it
cites is a heading of PROTOCOL.md. The README links to it."""

from __future__ import annotations

import importlib
import re
from types import ModuleType

import pytest

from .vectors import ROOT

DOC = ROOT / "docs" / "SAFETY.md"
TEXT = DOC.read_text(encoding="utf-8")

TESTS = sorted(set(re.findall(r"\b(tests/(?:\w+/)*test_\w+\.py)::(\w+)", TEXT)))
NAMES = sorted(set(re.findall(r"`(estim(?:\.\w+)+)`", TEXT)))
C_FUNCTIONS = sorted(set(re.findall(r"`estim_unit\.c:([a-z_][a-z0-9_]*)\(\)`", TEXT)))
SECTIONS = sorted(set(re.findall(r"PROTOCOL\.md (?:sections? )?(\d+(?:\.\d+)?)", TEXT)))


def test_the_document_names_tests_code_and_sections() -> None:
    # the patterns below still find what the document is made of
    assert len(TESTS) > 100
    assert len(NAMES) > 50
    assert len(C_FUNCTIONS) > 10
    assert {"3.4", "5.1", "9.1", "10"} <= set(SECTIONS)


def _module(path: str) -> ModuleType:
    return importlib.import_module(path.removesuffix(".py").replace("/", "."))


@pytest.mark.parametrize(("path", "name"), TESTS, ids=[f"{p}::{n}" for p, n in TESTS])
def test_every_test_it_names_exists(path: str, name: str) -> None:
    assert (ROOT / path).is_file(), f"docs/SAFETY.md names {path}, which does not exist"
    test = getattr(_module(path), name, None)
    assert test is not None, f"docs/SAFETY.md names {path}::{name}, which does not exist"
    if name.startswith("Test"):
        assert isinstance(test, type), f"{path}::{name} is not a test class"
    else:
        assert name.startswith("test_"), f"{path}::{name} is not a test pytest collects"
        assert callable(test), f"{path}::{name} is not a test function"


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            found = getattr(found, attr)  # AttributeError: the name is gone
        return found
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("dotted", NAMES)
def test_every_estim_name_it_gives_resolves(dotted: str) -> None:
    try:
        _resolve(dotted)
    except (ModuleNotFoundError, AttributeError) as err:
        pytest.fail(f"docs/SAFETY.md names `{dotted}`, which does not resolve: {err}")


def test_every_c_function_it_names_is_defined_in_the_reference_unit() -> None:
    source = (ROOT / "firmware_protocol" / "reference" / "estim_unit.c").read_text()
    missing = [
        name
        for name in C_FUNCTIONS
        if not re.search(rf"^(?:static )?[\w ]+?\**\b{name}\(", source, re.M)
    ]
    assert missing == []


def test_every_protocol_section_it_cites_exists() -> None:
    spec = (ROOT / "firmware_protocol" / "PROTOCOL.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#{2,4} (\d+(?:\.\d+)?)\.? ", spec, re.M))
    assert [s for s in SECTIONS if s not in headings] == []


def test_the_readme_links_to_it() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line for line in readme.splitlines() if "SAFETY.md" in line]
    assert lines
    assert [line for line in lines if "](docs/SAFETY.md)" not in line] == []
