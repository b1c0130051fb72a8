"""The mutation suite: every mutant of the C reference unit (catalogue.py), built by
cc like the unit itself, served on a pty, and checked by ``estim conformance``'s
own ``check`` (the clauses that matter to it, at a 2 s smallest dwell).

- a mutant that breaks a rule the wire shows must fail, at the row that names it;
- the unmutated unit, with the same options and clauses, must pass (so a catch is
  the mutant's doing, not the machine's);
- a mutant no wire test can see passes its clauses, and a measured test load (the
  unit's log of what it drove) shows what it does wrong.

Everything is built and run in parallel threads: each run waits mostly on the
unit's real time, and every window is judged by the unit's own clock, so running
them side by side costs no false verdict.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import serial

from estim.conformance.clause import FAIL, PASS, Rig
from estim.conformance.suite import Report, check, clause_names, open_port
from estim.protocol import (
    ConfigureChannel,
    Decoder,
    Heartbeat,
    Mode,
    Start,
    Stop,
    Waveform,
    encode,
)
from tests.cbuild import SOURCES, compile_objects, compile_patched
from tests.vectors import ROOT

from .catalogue import FAST, MUTANTS, OFF_THE_WIRE, ON_THE_WIRE, Mutant

ORIGINAL = "original"
#: runs at once: each is mostly waiting on the unit's clock
WORKERS = 8


def _patches(mutant: Mutant) -> dict[str, list[tuple[str, str]]]:
    return {mutant.file: [(mutant.find, mutant.replace), *mutant.also]}


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The unmutated unit and every mutant, built in parallel."""
    out = tmp_path_factory.mktemp("mutants")
    objects = compile_objects(out)
    builds = {ORIGINAL: {}, **{m.name: _patches(m) for m in MUTANTS}}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        jobs = {
            name: pool.submit(compile_patched, out / name, patches, objects)
            for name, patches in builds.items()
        }
        for job in jobs.values():
            job.result()
    return {name: out / name for name in builds}


class UnitProcess:
    """A unit binary on its pty: ``port`` from its first line; the rest of stdout
    (its ``--json`` log, if asked for) is read once it has ended."""

    def __init__(self, binary: Path, *options: str) -> None:
        self.proc = subprocess.Popen(
            [str(binary), *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        first = b""
        end = time.monotonic() + 20
        while not first.endswith(b"\n"):
            ready, _, _ = select.select(
                [self.proc.stdout], [], [], max(0.0, end - time.monotonic())
            )
            assert ready, f"{binary.name}: no PORT line"
            byte = os.read(self.proc.stdout.fileno(), 1)
            assert byte, (
                f"{binary.name} ended: {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
            first += byte
        assert first.startswith(b"PORT "), first
        self.port = first.decode().split(" ", 1)[1].strip()
        self.log: list[dict[str, Any]] = []

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=20)
        self.log = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        assert self.proc.returncode == 0, err.decode()


@contextmanager
def running(binary: Path, *options: str) -> Iterator[UnitProcess]:
    unit = UnitProcess(binary, *options)
    try:
        yield unit
    finally:
        unit.close()


@dataclass(frozen=True)
class Run:
    """One estim conformance run: a binary, its unit options, the clauses, the rig."""

    binary: str
    options: tuple[str, ...]
    clauses: frozenset[str]
    rig: Rig | None


def _conformance(binary: Path, run: Run) -> Report:
    with running(binary, *run.options, "-q") as unit:
        port = open_port(unit.port)
        try:
            return check(port, name=run.binary, confirm=lambda: True, only=run.clauses, rig=run.rig)
        finally:
            port.close()


def _runs() -> dict[str, Run]:
    """Each mutant's run, and a control run of the unmutated unit for every set of
    options and rig the mutants use, with all the clauses they run."""
    runs = {m.name: Run(m.name, (*FAST, *m.options), frozenset(m.clauses), m.rig) for m in MUTANTS}
    controls: dict[tuple[tuple[str, ...], Rig | None], set[str]] = {}
    for m in MUTANTS:
        controls.setdefault(((*FAST, *m.options), m.rig), set()).update(m.clauses)
    for (options, rig), clauses in controls.items():
        runs[f"{ORIGINAL} {' '.join(options)}"] = Run(ORIGINAL, options, frozenset(clauses), rig)
    return runs


@pytest.fixture(scope="module")
def reports(binaries: dict[str, Path]) -> dict[str, Report]:
    """Every run, in parallel."""
    runs = _runs()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        jobs = {
            name: pool.submit(_conformance, binaries[run.binary], run) for name, run in runs.items()
        }
        return {name: job.result() for name, job in jobs.items()}


def failed(report: Report) -> dict[str, str]:
    return {row.rule: row.seen for row in report.rows if row.result == FAIL}


# --- the catalogue ---------------------------------------------------------------------------


def test_there_are_at_least_30_mutants_each_a_patch_that_applies_once() -> None:
    assert len(MUTANTS) >= 30
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    for m in MUTANTS:
        text = (SOURCES / m.file).read_text()
        for find, _ in ((m.find, m.replace), *m.also):
            assert text.count(find) == 1, (m.name, find)
        assert set(m.clauses) <= set(clause_names()), m.name
        assert (m.catches is None) == bool(m.unseen) == bool(m.shows), m.name


def table_row(m: Mutant) -> str:
    """The mutant's row in reference/README.md's table."""
    caught = (
        f"`{m.catches}`"
        if m.catches
        else f"not on the wire: {m.unseen}; a measured load shows {m.shows}"
    )
    return f"| `{m.name}` | {m.rule} | {caught} |"


def test_the_reference_readme_s_table_is_the_catalogue() -> None:
    readme = (ROOT / "firmware_protocol" / "reference" / "README.md").read_text()
    table = [line for line in readme.split("## Mutants")[1].splitlines() if line.startswith("| `")]
    assert table == [table_row(m) for m in MUTANTS]
    assert f"keeps {len(MUTANTS)} copies" in readme
    assert f"{len(ON_THE_WIRE)} break a rule the wire shows" in readme
    assert f"{len(OFF_THE_WIRE)} break a rule no wire test can see" in readme


# --- on the wire: caught, by the row that names the rule ---------------------------------------


@pytest.mark.parametrize("mutant", ON_THE_WIRE, ids=[m.name for m in ON_THE_WIRE])
def test_estim_conformance_catches_it(mutant: Mutant, reports: dict[str, Report]) -> None:
    report = reports[mutant.name]
    assert report.exit_code == 4, report.rows
    assert mutant.catches in failed(report), (mutant.name, failed(report))


def test_the_unmutated_unit_passes_what_the_mutants_ran(reports: dict[str, Report]) -> None:
    controls = {name: r for name, r in reports.items() if name.startswith(ORIGINAL)}
    assert len(controls) >= 4
    for name, report in controls.items():
        assert failed(report) == {}, name
        assert report.unreachable is None, name
        assert {row.result for row in report.rows} <= {PASS, "SKIP"}


# --- off the wire: passes every clause; a measured load shows it -------------------------------


@pytest.mark.parametrize("mutant", OFF_THE_WIRE, ids=[m.name for m in OFF_THE_WIRE])
def test_no_wire_test_sees_it(mutant: Mutant, reports: dict[str, Report]) -> None:
    assert failed(reports[mutant.name]) == {}
    assert reports[mutant.name].exit_code == 0  # every clause it ran drives current


SESSION = 0x5E5E0001


def _measured_session(binary: Path, *options: str) -> list[dict[str, Any]]:
    """A session on channel 1 with channel 2 configured too, fed for 0.8 s, then
    left to its watchdog (500 ms); the unit's log of what it drove."""
    with running(binary, *FAST, "--json", *options) as unit:
        link = serial.Serial(unit.port, timeout=0.02)
        try:
            wire = b"\0"
            for seq, channel in ((1, 1), (2, 2)):
                wire += encode(
                    ConfigureChannel(
                        seq=seq,
                        channel=channel,
                        waveform=Waveform.BIPHASIC_SYMMETRIC,
                        mode=Mode.CONTINUOUS,
                        frequency_dhz=20,
                        pulse_width_us=250,
                        amplitude_ua=1000,
                        alt_frequency_dhz=0,
                        switch_ms=0,
                    )
                )
            wire += encode(
                Start(
                    seq=3,
                    session_id=SESSION,
                    dwell_ms=2000,
                    ramp_ms=500,
                    watchdog_ms=500,
                    channel_mask=1,
                )
            )
            link.write(wire)
            decoder = Decoder()
            seen: list[str] = []
            began = beat = time.monotonic()
            seq = 10
            while time.monotonic() - began < 2.0 and "STOPPED" not in seen:
                seen += [m.TYPE.name for m in decoder.feed(link.read(256))]
                if time.monotonic() - began < 0.8 and time.monotonic() - beat >= 0.1:
                    beat, seq = time.monotonic(), seq + 1
                    link.write(encode(Heartbeat(seq=seq, session_id=SESSION)))
            link.write(encode(Stop(seq=99, reason=1)))
            assert "OUTPUT_STARTED" in seen, seen
        finally:
            link.close()
    return unit.log


def measured_violations(log: list[dict[str, Any]], rig_fault_s: float | None) -> list[str]:
    """What a recorder on each channel's test load would show wrong: current outside
    the session's channels, current still flowing when the unit says output is off,
    current 50 ms after the rig's fault (``rig_fault_s`` after output started)."""
    problems = []
    levels: dict[int, int] = {}
    channels: set[int] = set()
    started = None
    for e in log:
        if e["kind"] == "output_on":
            channels, started = set(e["channels"]), e["t"]
        elif e["kind"] == "level":
            levels[e["channel"]] = e["ua"]
            if e["ua"] and e["channel"] not in channels:
                problems.append(
                    f"{e['ua']} uA on channel {e['channel']}, outside {sorted(channels)}"
                )
        elif e["kind"] == "output_off":
            if any(levels.values()):
                problems.append(f"{levels} uA still flowing at output_off ({e['reason']})")
            channels = set()
    if rig_fault_s is not None and started is not None:
        at = started + rig_fault_s + 0.05
        flowing = {}
        for e in log:
            if e["kind"] == "level" and e["t"] <= at:
                flowing[e["channel"]] = e["ua"]
        if any(flowing.values()):
            problems.append(f"{flowing} uA still flowing 50 ms after the rig's fault")
    return problems


def _rig_fault(options: tuple[str, ...]) -> float | None:
    for option in options:
        name, _, value = option.partition("=")
        if name in ("estop_at", "over_current_at"):
            return float(value.split(":")[0])
    return None


@pytest.mark.parametrize("mutant", OFF_THE_WIRE, ids=[m.name for m in OFF_THE_WIRE])
def test_a_measured_test_load_shows_it(mutant: Mutant, binaries: dict[str, Path]) -> None:
    at = _rig_fault(mutant.measured)
    with ThreadPoolExecutor(max_workers=2) as pool:
        original = pool.submit(_measured_session, binaries[ORIGINAL], *mutant.measured)
        mutated = pool.submit(_measured_session, binaries[mutant.name], *mutant.measured)
        clean, broken = original.result(), mutated.result()
    assert measured_violations(clean, at) == []
    assert measured_violations(broken, at), mutant.shows
