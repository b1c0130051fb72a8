"""A journal under a live session: deleted, closed by its program while another
opens it, its sidecar imported by several processes at once (issue 18 items 5, 7
and 11). The session is never lost, never marked interrupted while it runs, and
no event is dropped or numbered twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from estim.clock import ManualClock
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.sim import SimulatedUnit, serve

from .runners import RUNNERS, connector

CH1 = ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)
PLAN = SessionPlan(dwell=120, ramp=2, channels=[CH1], patient_ref="P-7")


def remove_journal_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_journal_deleted_under_a_live_session_stops_it_and_loses_nothing(
    tmp_path: Path, runner: str
) -> None:
    db = tmp_path / "estim.db"
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url, connector(runner, clock)(url) as device:
        journal = Journal(db)
        session = device.start(PLAN, journal=journal)
        clock.advance(10)
        session.set_amplitude(1, 6)
        clock.advance(2)
        remove_journal_files(db)
        record = session.wait(timeout=10)
        stopped_at = unit.events("output_off")[-1].t
        journal.close()
    assert stopped_at - 12 <= 1.5  # found within a second or so, not at the next event
    assert record.outcome == "aborted"
    assert "deleted" in (record.stop_reason or "")
    assert record.journal_error is not None
    assert "saved to" in record.journal_error
    with Journal(db) as reopened:  # a new file at the same path imports the sidecar
        back = reopened.get(record.id)
    # (journal_error is what the writing process met; the journal holds the rest)
    assert back == record.model_copy(update={"journal_error": None})
    assert back.events[0].kind == "start_requested"
    assert "amplitude_set" in [e.kind for e in back.events]


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_journal_closed_mid_session_is_not_mistaken_for_a_crash_by_another_open(
    tmp_path: Path, runner: str
) -> None:
    db = tmp_path / "estim.db"
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url, connector(runner, clock)(url) as device:
        journal = Journal(db)
        session = device.start(PLAN, journal=journal)
        clock.advance(10)
        journal.close()  # the app closes its journal while the session runs
        with Journal(db) as history:  # and estim history opens it meanwhile
            assert history.interrupted == []
            assert history.get(session.id).outcome is None  # live, not interrupted
        session.set_amplitude(1, 6)
        record = session.wait(timeout=10)
        with Journal(db) as history:  # while the sidecar may still be on its way
            assert history.interrupted == []
    assert record.outcome == "aborted"
    with Journal(db) as reopened:
        back = reopened.get(record.id)
    assert back == record.model_copy(update={"journal_error": None})
    numbers = [e.n for e in back.events]
    assert numbers == list(range(len(numbers)))
    assert "interrupted" not in [e.kind for e in back.events]


def test_a_sidecar_wins_over_a_guess_of_interrupted(tmp_path: Path) -> None:
    """A session another process marked interrupted (its liveness lock was gone)
    whose real end arrives later in a sidecar: the facts replace the guess."""
    db = tmp_path / "estim.db"
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url, connector("threads", clock)(url) as device:
        journal = Journal(db)
        session = device.start(PLAN, journal=journal)
        clock.advance(10)
        journal._release_lock(session.id)  # as a journal of an older estim did on close()
        journal.close()
        with Journal(db) as guess:
            assert guess.interrupted == [session.id]
        record = session.wait(timeout=10)
    with Journal(db) as reopened:
        back = reopened.get(record.id)
    assert back.outcome == record.outcome == "aborted"
    assert back.events == record.events
    assert [e.n for e in back.events] == list(range(len(back.events)))


def test_opening_a_journal_with_a_pending_sidecar_from_many_processes_at_once(
    tmp_path: Path,
) -> None:
    db = tmp_path / "estim.db"
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url, connector("threads", clock)(url) as device:
        journal = Journal(db)
        session = device.start(PLAN, journal=journal)
        clock.advance(5)
        journal.close()
        record = session.wait(timeout=10)
    assert list(tmp_path.glob("estim.db.pending-*.json"))
    opener = "import sys; from estim.journal import Journal; Journal(sys.argv[1]).close()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", opener, str(db)],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
        for _ in range(12)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    failures = [e for p, e in zip(procs, errors, strict=True) if p.returncode != 0]
    assert failures == []
    assert not list(tmp_path.glob("estim.db.pending-*.json"))
    with Journal(db) as reopened:
        assert reopened.get(record.id) == record.model_copy(update={"journal_error": None})


def test_a_host_killed_after_its_end_was_journaled_keeps_that_end(tmp_path: Path) -> None:
    """The host died after the session's "ended" event (the unit's COMPLETED with its
    delivered time) was journaled, before the outcome was: the next open said
    "interrupted, delivered unknown" though the journal held the facts."""
    import os

    from estim.outbox import Outbox

    from .outbox_helpers import guessable

    path = tmp_path / "estim.db"
    plan = PLAN.model_dump(mode="json")
    unit = {"model": "estim-sim", "serial_number": "S1", "firmware": "1", "simulated": True}
    writer, sid = guessable(path, 0xC0FFEE, plan, unit)
    writer.append(sid, "unit_completed", {"delivered_ms": 60000}, t=60.0, unit_ms=60000)
    ended = {
        "outcome": "completed",
        "reason": "the unit's own deadline ended it",
        "ended_by": "unit",
        "delivered_ms": 60000,
    }
    writer.append(sid, "ended", ended, t=60.0, utc="2026-12-05T10:01:00.000Z")
    writer._db.close()  # (killed: no finish)
    with Journal(path) as journal:
        assert journal.interrupted == []
        record = journal.get(sid)
        assert (record.outcome, record.stop_reason, record.ended_by, record.delivered_s) == (
            "completed",
            "the unit's own deadline ended it",
            "unit",
            60.0,
        )
        assert record.events[-1].kind == "ended"
        assert Outbox(journal).pending() == [sid]
    assert not os.path.exists(str(path) + ".locks/" + sid)


def test_a_journal_opened_through_a_symlink_sees_the_live_sessions_of_its_file(
    tmp_path: Path,
) -> None:
    """The liveness locks and sidecars were named from the path given: another program
    opening the same file through a symlink found no lock, marked the live session
    interrupted and queued that guess for the clinic's server."""
    real, link = tmp_path / "estim.db", tmp_path / "clinic.db"
    with Journal(real) as journal:
        unit = {"model": "m", "serial_number": "s", "firmware": "f", "simulated": True}
        sid = journal.begin(
            0x1234, plan=PLAN.model_dump(mode="json"), unit=unit, port="sim://", planned_ms=60000
        )
        link.symlink_to(real)
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from estim.journal import Journal; "
                "j = Journal(sys.argv[1]); print(j.interrupted); j.close()",
                str(link),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == "[]"
        assert journal.get(sid).outcome is None  # still live


def test_many_programs_opening_a_new_journal_at_once_all_open_it(tmp_path: Path) -> None:
    """Each created the file and migrated it from version 0 at the same moment: all but
    one failed ("table sessions already exists", "File exists", "database is locked")."""
    for trial in range(5):
        path = tmp_path / f"estim-{trial}.db"
        go_r, go_w = os.pipe()
        children = []
        for _ in range(6):
            pid = os.fork()
            if pid == 0:  # a program: waits at the barrier, opens the journal
                code = 1
                try:
                    os.close(go_w)
                    os.read(go_r, 1)
                    Journal(path).close()
                    code = 0
                except BaseException as err:
                    os.write(2, f"{type(err).__name__}: {err}\n".encode())
                finally:
                    os._exit(code)
            children.append(pid)
        os.close(go_r)
        os.write(go_w, b"x" * 6)  # all at once
        os.close(go_w)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
        assert codes == [0] * 6
        with Journal(path) as journal:
            assert journal.query() == []
