"""The journal fails mid-session, through ``estim run`` (issue 7).

SAFETY.md 7: a journal write failure mid-session stops output; SAFETY.md 5: with a
recorded reason where it can still be recorded. The CLI must then exit with code 6,
and what the journal already held must survive.

How each failure is made, and why so:

- **Disk full, in a real process** (Linux): ``estim run`` runs in a subprocess on
  the simulator's pty. Once the unit logs output on, the test lowers the process's
  file-size limit (``RLIMIT_FSIZE``, via ``prlimit``, no privileges needed) to the
  journal's current size. SQLite appends every transaction to its write-ahead log,
  so the next event the host journals fails with a write error (``EFBIG``; Python
  ignores SIGXFSZ), exactly where a full disk fails it (``ENOSPC``). SQLite reports
  ``EFBIG`` as an I/O error and ``ENOSPC`` as "database or disk is full"; estim
  handles both as ``sqlite3.Error``.
- **Disk full, for real** (root only, skipped otherwise): the journal lives on a
  tiny tmpfs that the test fills up once output is on: ``ENOSPC`` itself.
- **Read-only, in-process**: a file made read-only (chmod, or a read-only
  remount) does not affect a connection that already has it open, and root
  ignores permissions; so no OS-level change makes an open journal read-only,
  portably. The CLI runs in-process (``estim.cli.main``) against a manual-clock
  unit, and when the unit reaches full amplitude the journal's own connection
  is switched to ``PRAGMA query_only``: SQLite then refuses every write with
  "attempt to write a readonly database", the error a read-only file gives.
- **Cannot be written at the start** (subprocess): the file-size limit is set
  before ``estim run`` starts, so "start requested" cannot be committed: no START
  may reach the unit, and the exit code is 6.

Scale: these are fixed cases; ``ESTIM_RELIABILITY`` does not change them.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estim.clock import ManualClock
from estim.journal import Journal
from estim.sim import SimulatedUnit
from estim.sim.unit import LogEntry

from .procs import SimProcess

JOURNAL_EXIT = 6
RUN = ["run", "--dwell", "1m", "--ramp", "2", "-c", "1:2:250:5", "--yes"]

linux_only = pytest.mark.skipif(
    sys.platform != "linux" or not hasattr(resource, "prlimit"),
    reason="needs Linux (ptys, prlimit)",
)


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "ESTIM_HOME": str(home)}
    for name in ("ESTIM_PORT", "ESTIM_DB", "ESTIM_CONFIG"):
        env.pop(name, None)
    return env


def _snapshot(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every event in the journal, read without writing (a live host may hold it)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT session_id, n, utc, t, unit_ms, kind, data FROM events ORDER BY session_id, n"
        ).fetchall()
    out: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        out.setdefault(row[0], []).append(tuple(row[1:]))
    return out


def _check_after(db: Path, session_id: str, before: list[tuple[Any, ...]]) -> list[str]:
    """The journal after the failure: it opens, every event written before is still
    there unchanged, and the unfinished session reads as interrupted. Returns the
    session's event kinds."""
    with Journal(db) as journal:
        row = journal.session_row(session_id)
        assert row is not None
        events = journal.event_rows(session_id)
        kept = [(e["n"], e["utc"], e["t"], e["unit_ms"], e["kind"], e["data"]) for e in events][
            : len(before)
        ]
        assert kept == [(*b[:5], json.loads(b[5])) for b in before]
        assert events[0]["kind"] == "start_requested"
        # the outcome came back from the sidecar, or the next open says it was cut short
        assert row["outcome"] in ("aborted", "interrupted"), row
        kinds = [e["kind"] for e in events]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return kinds


def _run_host(sim: SimProcess, db: Path, home: Path, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "estim", *RUN, "--port", sim.port, "--db", str(db)],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _journal_size(db: Path) -> int:
    """The size its next transaction must grow: the write-ahead log's, if there is one."""
    wal = db.with_name(db.name + "-wal")
    return (wal if wal.exists() else db).stat().st_size


def _disk_fails_mid_session(
    db: Path, home: Path, make_it_fail: Any, *, says: str, then: Any = None
) -> None:
    """``estim run`` in a subprocess; ``make_it_fail(host)`` once output is on; the
    host must say ``says`` (a part of SQLite's message); ``then()`` runs before the
    journal is reopened."""
    Journal(db).close()  # an existing journal, as in a clinic
    with SimProcess("--pty", "--json") as sim:
        host = _run_host(sim, db, home)
        try:
            on = sim.wait_for(lambda e: e["kind"] == "output_on", timeout=60)
            session_id = f"{on['session_id']:08x}"
            before = _snapshot(db).get(session_id, [])
            assert before
            assert before[0][4] == "start_requested"
            make_it_fail(host)
            off = sim.wait_for(lambda e: e["kind"] == "output_off", timeout=30)
            out, err = host.communicate(timeout=60)
        finally:
            if host.poll() is None:
                host.kill()
                host.communicate()
    # the host stopped output itself (a STOP, not the watchdog), long before the dwell
    assert off["session_id"] == on["session_id"]
    assert off["reason"] == "stop", off
    assert off["delivered_ms"] < 5_000, off
    assert host.returncode == JOURNAL_EXIT, (host.returncode, out, err)
    assert "journal could not be written" in out, out
    assert says in (out + err).lower(), (out, err)
    if then is not None:
        then()
    kinds = _check_after(db, session_id, before)
    assert not list(db.parent.glob(f"{db.name}.pending-*"))
    if "sidecar file failed too" in out:
        # a process that may not grow any file (RLIMIT_FSIZE) cannot write the sidecar
        # either: the end was printed, and the next open says the session was cut short
        assert kinds[-1] == "interrupted"
        return
    # what the journal would not take went to a sidecar file, imported on this open:
    # the session's end is on record, not just "interrupted"
    assert "saved to" in out, out
    assert kinds[-1] == "ended"
    with Journal(db) as journal:
        record = journal.get(session_id)
    assert record.outcome == "aborted"
    assert (record.stop_reason or "").startswith("journal:")


@linux_only
def test_disk_full_mid_session_stops_output_and_exits_6(tmp_path: Path) -> None:
    db = tmp_path / "estim.db"

    def full(host: subprocess.Popen[str]) -> None:
        size = _journal_size(db)
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.prlimit(host.pid, resource.RLIMIT_FSIZE, (size, hard))

    _disk_fails_mid_session(db, tmp_path / "home", full, says="disk i/o error")


@contextlib.contextmanager
def _tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        problem = f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must fill a real disk: {problem}", pytrace=False)
        pytest.skip(problem)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        if os.path.ismount(where):
            subprocess.run(["umount", "-l", str(where)], check=False)


@linux_only
@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None,
    reason="mounting a tmpfs needs root",
)
def test_a_really_full_disk_mid_session_stops_output_and_exits_6(tmp_path: Path) -> None:
    with _tiny_tmpfs(tmp_path / "disk", "2m") as disk:
        db = disk / "estim.db"
        filler = disk / "filler"

        def full(host: subprocess.Popen[str]) -> None:
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:  # take every free block
                for block in (1 << 16, 1 << 12, 1):
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(fd, bytes(block))
            finally:
                os.close(fd)
            assert shutil.disk_usage(disk).free < 4096

        try:
            # the operator frees space before the journal is opened again
            _disk_fails_mid_session(
                db, tmp_path / "home", full, says="database or disk is full", then=filler.unlink
            )
        finally:
            filler.unlink(missing_ok=True)


@linux_only
def test_a_journal_that_cannot_be_written_means_no_output_and_exit_6(tmp_path: Path) -> None:
    db = tmp_path / "estim.db"
    Journal(db).close()
    # one page: no write-ahead-log frame fits, nor SQLite's 32 KiB shared-memory index,
    # whatever size the journal has (its size was once below 32 KiB; the outbox table of
    # schema version 2 took it past, and then there was room for "start requested")
    limit = 4096

    def no_room() -> None:  # in the child, before exec: this process only
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    with SimProcess("--pty", "--json") as sim:
        host = _run_host(sim, db, tmp_path / "home", preexec_fn=no_room)
        out, err = host.communicate(timeout=60)
        # the unit saw the host (HELLO) but never a START
        sim.proc.send_signal(15)
        sim.proc.wait(timeout=10)
        while sim.readline(5) is not None:
            pass
    kinds = [line for line in sim.lines if '"output_on"' in line]
    assert host.returncode == JOURNAL_EXIT, (host.returncode, out, err)
    assert kinds == []
    with Journal(db) as journal:
        assert journal.session_rows() == []  # "start requested" was never committed


# --- read-only, in-process on a manual clock ---------------------------------------------


def test_a_read_only_journal_mid_session_stops_output_and_exits_6(
    estim_unit: SimulatedUnit,
    estim_url: str,
    estim_clock: ManualClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import estim.journal
    from estim.cli import main

    opened: list[Journal] = []

    class Recorded(estim.journal.Journal):  # the real journal; the test keeps a handle on it
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(estim.journal, "Journal", Recorded)
    monkeypatch.setenv("ESTIM_HOME", str(tmp_path / "home"))
    for name in ("ESTIM_PORT", "ESTIM_DB", "ESTIM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "estim.db"
    before: dict[str, list[dict[str, Any]]] = {}

    def read_only_at_full_amplitude(entry: LogEntry) -> None:
        if entry.kind == "state" and entry.data["state"] == "RUNNING" and not before:
            (journal,) = opened
            sid = f"{estim_unit.session_id:08x}"
            before[sid] = journal.event_rows(sid)
            with journal._lock:
                journal._db.execute("PRAGMA query_only = ON")

    estim_unit.listeners.append(read_only_at_full_amplitude)
    with pytest.raises(SystemExit) as exited:
        main([*RUN, "--port", estim_url, "--db", str(db)])
    out, err = capsys.readouterr()
    assert exited.value.code == JOURNAL_EXIT, (out, err)
    assert "readonly" in (out + err).lower()
    estim_clock.advance(1)
    (session_id,) = before
    assert before[session_id][0]["kind"] == "start_requested"
    on = estim_unit.events("output_on")
    off = estim_unit.events("output_off")
    assert len(on) == len(off) == 1
    assert off[0].data["reason"] == "stop"
    # output went off at full amplitude, 2 s in, the moment the journal failed
    assert off[0].t - on[0].t == pytest.approx(2.0, abs=0.11)
    assert not estim_unit.output_on
    with Journal(db) as journal:
        events = journal.event_rows(session_id)
        assert events[: len(before[session_id])] == before[session_id]
        row = journal.session_row(session_id)
        assert row is not None
        # the sidecar file brought the end back on this open
        assert row["outcome"] == "aborted"
        assert row["stop_reason"].startswith("journal:")
        assert events[-1]["kind"] == "ended"


# --- recovery never rewrites history (issue 13) ------------------------------------------


def _begin(journal: Journal, sid: int) -> str:
    from estim.plan import ChannelPlan, SessionPlan

    plan = SessionPlan(
        dwell=60,
        channels=[ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)],
    )
    return journal.begin(
        sid,
        plan=plan.model_dump(mode="json"),
        unit={"model": "m", "serial_number": "s", "firmware": "f", "simulated": True},
        port="sim://",
        planned_ms=60_000,
    )


def test_recovery_never_overwrites_a_session_finished_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On main, Journal._recover read the unfinished sessions, then checked each one's
    # lock: a finish() by the live process between the two turned a completed session
    # into "interrupted". Here that interleaving is forced, not hoped for.
    db = tmp_path / "estim.db"
    live = Journal(db)
    sid = _begin(live, 0x1234)
    held = Journal._held_elsewhere

    def finishes_meanwhile(self: Journal, session_id: str) -> bool:
        if session_id == sid:  # after the read, before the check: the live host finishes
            live.finish(
                sid,
                outcome="completed",
                stop_reason="the unit's own deadline ended it",
                ended_by="unit",
                delivered_ms=60_000,
                started_utc=None,
                ended_utc="2026-11-27T10:01:00.000Z",
            )
            return False
        return held(self, session_id)

    monkeypatch.setattr(Journal, "_held_elsewhere", finishes_meanwhile)
    with Journal(db) as reopened:
        assert reopened.interrupted == []
        record = reopened.get(sid)
    live.close()
    assert (record.outcome, record.stop_reason) == (
        "completed",
        "the unit's own deadline ended it",
    )
    assert [e.kind for e in record.events] == ["start_requested"]


def test_interrupted_is_stamped_with_the_last_moment_output_was_known(tmp_path: Path) -> None:
    from estim.record import EventRecord

    db = tmp_path / "estim.db"
    crashed = Journal(db)
    sid = _begin(crashed, 0x99)
    crashed.write_event(
        sid,
        EventRecord(n=1, utc="2026-11-27T10:00:05.002Z", t=5.002, unit_ms=5002, kind="ramp_done"),
        "running",
    )
    os.close(crashed._locks.pop(sid))  # the host dies: the OS drops its lock
    crashed._db.close()
    with Journal(db) as reopened:
        record = reopened.get(sid)
    last = record.events[-1]
    assert last.kind == "interrupted"
    assert (last.t, last.utc) == (5.002, "2026-11-27T10:00:05.002Z")
    assert "ramp_done at 2026-11-27T10:00:05.002Z" in (record.stop_reason or "")
    assert "last known" in (record.stop_reason or "")
