"""Builds the C reference unit (firmware_protocol/reference/) once per test session,
with the sanitizers: the ``cunit`` fixture (registered in tests/conftest.py). No C
compiler, or a build that fails, fails the tests."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.vectors import ROOT

SOURCES = ROOT / "firmware_protocol" / "reference"
CORE = ["estim_unit.c", "estim_wire.c"]
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
SANITIZE = [
    "-g",
    "-O1",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
]


@dataclass(frozen=True)
class Build:
    unit: Path  # the POSIX pty harness around the unit
    fuzz: Path  # the fuzz driver


def compile_c(out: Path, sources: list[str], flags: list[str]) -> None:
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler (cc) on PATH: the C reference unit cannot be built")
    command = [cc, *STRICT, *flags, "-o", str(out), *(str(SOURCES / s) for s in sources)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{done.stderr}")


@pytest.fixture(scope="session")
def cunit(tmp_path_factory: pytest.TempPathFactory) -> Build:
    out = tmp_path_factory.mktemp("cunit")
    compile_c(out / "estim-ref-c", ["posix_pty.c", *CORE], SANITIZE)
    compile_c(out / "fuzz", ["fuzz.c", *CORE], SANITIZE)
    return Build(unit=out / "estim-ref-c", fuzz=out / "fuzz")
