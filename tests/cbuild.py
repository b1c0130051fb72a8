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


#: mutants (tests/mutants): the strict flags without -Werror (a patch may leave a
#: function unused), optimised, no sanitizers: each builds in a fraction of a second
MUTANT_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-O1"]


def compile_patched(
    out: Path, patches: dict[str, list[tuple[str, str]]], objects: dict[str, Path]
) -> None:
    """Build the pty harness with each file of ``patches`` patched ((find, replace)
    pairs, each text found exactly once); the other sources come as ``objects``
    already compiled with MUTANT_FLAGS. Raises AssertionError if a patch does not
    apply (the C unit changed under it) or the build fails."""
    cc = shutil.which("cc")
    assert cc is not None, "no C compiler (cc) on PATH: the mutants cannot be built"
    work = out.parent / f"{out.name}-src"
    work.mkdir()
    inputs = []
    for source in ["posix_pty.c", *CORE]:
        if source not in patches:
            inputs.append(str(objects[source]))
            continue
        text = (SOURCES / source).read_text()
        for find, replace in patches[source]:
            count = text.count(find)
            assert count == 1, f"{out.name}: {find!r} occurs {count} times in {source}"
            text = text.replace(find, replace)
        (work / source).write_text(text)
        inputs.append(str(work / source))
    command = [cc, *MUTANT_FLAGS, f"-I{SOURCES}", "-o", str(out), *inputs]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr}"


def compile_objects(out: Path) -> dict[str, Path]:
    """Every source compiled once with MUTANT_FLAGS, for the mutants to link."""
    cc = shutil.which("cc")
    assert cc is not None, "no C compiler (cc) on PATH: the mutants cannot be built"
    objects = {}
    for source in ["posix_pty.c", *CORE]:
        obj = out / source.replace(".c", ".o")
        command = [cc, *MUTANT_FLAGS, "-c", "-o", str(obj), str(SOURCES / source)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr}"
        objects[source] = obj
    return objects


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
