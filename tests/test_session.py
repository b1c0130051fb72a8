"""Sessions against sim:// on a manual clock shared by host and unit.

Each test is a rule of SAFETY.md sections 1-5 and 7: the output in the
simulator's own log, and the reason in the journal.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estim.clock import ManualClock
from estim.device import Device
from estim.errors import (
    DeviceError,
    DeviceFault,
    DwellLimitError,
    EstimError,
    JournalError,
    OutputLimitError,
)
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.protocol import Fault, MessageType, StopReason
from estim.record import EventRecord, SessionRecord
from estim.runner import INTERRUPTED
from estim.session import Session
from estim.session_state import SessionState
from estim.sim import SimulatedUnit, UnitConfig, serve

from .runners import RUNNERS, connector, hang_the_loop

CH1 = ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=12)


def plan(dwell: Any = 600, **changes: Any) -> SessionPlan:
    fields: dict[str, Any] = {
        "dwell": dwell,
        "ramp": 5,
        "channels": [CH1],
        "patient_ref": "P-0042",
        "site": "left vastus lateralis",
    }
    fields.update(changes)
    return SessionPlan(**fields)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "estim.db") as j:
        yield j


@pytest.fixture(params=RUNNERS)
def connect(request: pytest.FixtureRequest, estim_clock: ManualClock) -> Any:
    """``connect`` of the threaded runner, or of the asyncio one (tests/runners.py):
    every session test runs against both."""
    return connector(request.param, estim_clock)


@pytest.fixture
def device(estim_url: str, connect: Any) -> Iterator[Device]:
    with connect(estim_url) as d:
        yield d


def output_seconds(unit: SimulatedUnit) -> float:
    on = unit.events("output_on")[-1].t
    off = unit.events("output_off")[-1].t
    return off - on


def journal_record(journal: Journal, session: Session) -> SessionRecord:
    row = journal.session_row(session.id)
    assert row is not None
    return SessionRecord.from_journal(row, journal.event_rows(session.id))


# --- SAFETY.md 1: dwell --------------------------------------------------------------------


@pytest.mark.parametrize(
    "dwell", [59, 601, 0, -5, float("nan"), float("inf"), "abc", "11m", "59s", "10m1s", True, None]
)
def test_the_model_refuses_dwell_outside_60_to_600_s(dwell: Any) -> None:
    with pytest.raises(DwellLimitError, match="dwell"):  # estim's own error, still a ValueError
        plan(dwell)


@pytest.mark.parametrize(
    ("dwell", "seconds"),
    [
        (60, 60),
        (600, 600),
        ("8m", 480),
        ("90s", 90),
        ("1m30s", 90),
        ("8:00", 480),
        ("10:00", 600),
        (" 1m ", 60),
        ("600", 600),
    ],
)
def test_the_model_accepts_people_s_durations(dwell: Any, seconds: float) -> None:
    assert plan(dwell).dwell == seconds


def test_the_session_refuses_a_dwell_the_model_was_bypassed_for(
    device: Device, journal: Journal, estim_unit: SimulatedUnit
) -> None:
    for dwell in (59.0, 601.0):
        forged = SessionPlan.model_construct(dwell=dwell, ramp=5.0, channels=[CH1], watchdog=0.5)
        with pytest.raises(DwellLimitError, match="outside 60-600 s"):
            device.start(forged, journal=journal)
    from estim.protocol import MessageType

    assert estim_unit.requests_seen[MessageType.CONFIGURE_CHANNEL] == 0
    assert estim_unit.requests_seen[MessageType.START] == 0
    assert journal.session_rows() == []


@pytest.mark.estim_unit(dwell_min_ms=30_000, dwell_max_ms=1_200_000)
def test_a_unit_that_allows_longer_dwell_does_not_widen_the_limit(
    device: Device, journal: Journal, estim_unit: SimulatedUnit
) -> None:
    forged = SessionPlan.model_construct(dwell=601.0, ramp=5.0, channels=[CH1], watchdog=0.5)
    with pytest.raises(DwellLimitError):
        device.start(forged, journal=journal)
    from estim.protocol import MessageType

    assert estim_unit.requests_seen[MessageType.START] == 0


@pytest.mark.estim_unit(dwell_max_ms=300_000)
def test_a_unit_with_a_narrower_range_refuses_before_anything_is_sent(
    device: Device, journal: Journal, estim_unit: SimulatedUnit
) -> None:
    from estim.protocol import MessageType

    with pytest.raises(DwellLimitError, match="outside the unit's range, 1 min to 5 min"):
        device.start(plan(600), journal=journal)
    assert estim_unit.requests_seen[MessageType.CONFIGURE_CHANNEL] == 0
    assert journal.session_rows() == []


def test_600_s_completes_with_exactly_600_s_delivered(
    device: Device, journal: Journal, estim_unit: SimulatedUnit
) -> None:
    session = device.start(plan(600), journal=journal)
    record = session.wait(timeout=700)
    assert record.outcome == "completed"
    assert record.delivered_s == 600.0
    assert record.ended_by in ("unit", "host")
    assert output_seconds(estim_unit) == 600.0
    assert estim_unit.output_ua(1) == 0
    assert session.state == SessionState.COMPLETED
    stored = journal_record(journal, session)
    assert (stored.outcome, stored.delivered_s, stored.ended_by) == (
        "completed",
        600.0,
        record.ended_by,
    )
    kinds = [e.kind for e in stored.events]
    assert kinds[0] == "start_requested"
    assert kinds[-1] == "ended"
    assert {"start_accepted", "output_started", "ramp_done", "ramp_down"} <= set(kinds)


def test_60_s_is_the_shortest_session(
    device: Device, journal: Journal, estim_unit: SimulatedUnit
) -> None:
    record = device.start(plan(60), journal=journal).wait(timeout=100)
    assert (record.outcome, record.delivered_s) == ("completed", 60.0)
    assert output_seconds(estim_unit) == 60.0


def test_the_unit_deadline_is_the_backstop_when_the_host_timer_is_late(
    device: Device, journal: Journal, estim_unit: SimulatedUnit
) -> None:
    session = device.start(plan(60), journal=journal)
    session._host_deadline = session.clock.now() + 3600  # a host whose own timer failed
    record = session.wait(timeout=100)
    assert (record.outcome, record.ended_by, record.delivered_s) == ("completed", "unit", 60.0)
    assert "the unit's own deadline" in (record.stop_reason or "")


# --- SAFETY.md 2: heartbeats come from the loop; a hung loop is stopped by the unit ----------


def test_a_hung_loop_is_stopped_by_the_unit_watchdog(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    session = device.start(plan(600, watchdog=0.5), journal=journal)
    estim_clock.advance(10)
    hang_the_loop(device, estim_clock, 30)  # the session loop itself is stuck for 30 s
    record = session.wait(timeout=100)
    assert estim_unit.faults == {Fault.WATCHDOG}
    watchdog = estim_unit.events("watchdog")[-1]
    off = estim_unit.events("output_off")[-1]
    assert off.t - watchdog.data["last_frame"] == pytest.approx(0.5)
    assert off.t - estim_unit.events("output_on")[-1].t == pytest.approx(10.0 + 0.5, abs=0.11)
    assert record.outcome == "faulted"
    assert "WATCHDOG" in (record.stop_reason or "")
    assert "stalled" in (record.stop_reason or "")  # the host knows it was its own silence
    assert record.delivered_s == pytest.approx(10.5, abs=0.11)


@pytest.mark.parametrize("seconds", [0.7, 30.0])
def test_a_slow_callback_never_delays_a_heartbeat(
    device: Device,
    journal: Journal,
    estim_unit: SimulatedUnit,
    estim_clock: ManualClock,
    seconds: float,
) -> None:
    # issue 10: on main, an on_event callback sleeping 0.7 s faulted the session
    def slow(event: EventRecord) -> None:
        if event.kind in ("ramp_done", "start_accepted"):
            estim_clock.sleep(seconds)

    record = device.start(plan(60), journal=journal, on_event=slow).wait(timeout=200)
    assert (record.outcome, record.delivered_s) == ("completed", 60.0)
    assert estim_unit.faults == set()
    assert estim_unit.events("output_off")[-1].data["max_frame_gap_ms"] <= 100.0


def test_heartbeats_are_at_most_100_ms_apart(
    device: Device, journal: Journal, estim_unit: SimulatedUnit
) -> None:
    device.start(plan(60), journal=journal).wait(timeout=100)
    assert estim_unit.faults == set()
    from estim.protocol import MessageType

    assert estim_unit.requests_seen[MessageType.HEARTBEAT] >= 599


# --- SAFETY.md 3: limits -----------------------------------------------------------------------


def test_plausibility_rms_into_500_ohm_is_refused() -> None:
    with pytest.raises(OutputLimitError, match=r"r\.m\.s\. into 500 ohm, which exceeds 50 mA"):
        ChannelPlan(channel=1, frequency_hz=150, pulse_width_us=500, amplitude_ma=250)


def test_a_ramp_faster_than_the_unit_slews_is_refused_before_sending(
    device: Device, journal: Journal, estim_unit: SimulatedUnit
) -> None:
    with pytest.raises(OutputLimitError, match=r"use a ramp of at least 1\.2 s"):
        device.start(plan(60, ramp=1), journal=journal)
    from estim.protocol import MessageType

    assert set(estim_unit.requests_seen) == {
        MessageType.HELLO,
        MessageType.GET_STATUS,
    }  # connect only


# --- SAFETY.md 4 and 5: every stop path ends with output off and a reason ----------------------


def advance_until_running(session: Session, clock: ManualClock) -> None:
    clock.advance(10)
    assert session.state == SessionState.RUNNING


def test_operator_stop(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    session = device.start(plan(), journal=journal)
    advance_until_running(session, estim_clock)
    session.stop()
    assert not estim_unit.output_on  # off before stop() returned
    record = session.wait(timeout=5)
    assert (record.outcome, record.stop_reason) == ("stopped", "operator")
    assert record.delivered_s == pytest.approx(10.0)
    assert journal_record(journal, session).outcome == "stopped"


def test_signal_style_stop_request(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    session = device.start(plan(), journal=journal)
    advance_until_running(session, estim_clock)
    session.request_stop(StopReason.HOST_SHUTDOWN, "SIGTERM: the program was asked to end")
    record = session.wait(timeout=5)
    assert not estim_unit.output_on
    assert (record.outcome, record.stop_reason) == (
        "stopped",
        "SIGTERM: the program was asked to end",
    )


def test_leaving_the_with_block(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    with device.start(plan(), journal=journal) as session:
        advance_until_running(session, estim_clock)
    assert not estim_unit.output_on
    assert session.record().outcome == "stopped"
    assert "with block" in (session.record().stop_reason or "")


def test_closing_the_device_ends_its_session(
    estim_url: str,
    journal: Journal,
    estim_unit: SimulatedUnit,
    estim_clock: ManualClock,
    connect: Any,
) -> None:
    with connect(estim_url) as device:
        session = device.start(plan(), journal=journal)
        advance_until_running(session, estim_clock)
    assert not estim_unit.output_on
    assert session.record().outcome == "stopped"


def test_an_exception_in_the_event_callback(
    device: Device, journal: Journal, estim_unit: SimulatedUnit
) -> None:
    def boom(event: EventRecord) -> None:
        if event.kind == "ramp_done":
            raise RuntimeError("chart widget crashed")

    record = device.start(plan(), journal=journal, on_event=boom).wait(timeout=60)
    assert not estim_unit.output_on
    assert record.outcome == "aborted"
    assert "chart widget crashed" in (record.stop_reason or "")
    assert estim_unit.events("output_off")[-1].t - estim_unit.events("output_on")[
        -1
    ].t == pytest.approx(5.0)


def test_link_loss(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    session = device.start(plan(), journal=journal)
    advance_until_running(session, estim_clock)
    device.port.sim_connection.unplug()
    record = session.wait(timeout=5)
    assert record.outcome == "link_lost"
    estim_clock.advance(1)
    assert not estim_unit.output_on
    assert estim_unit.faults == {Fault.WATCHDOG}
    assert journal_record(journal, session).outcome == "link_lost"


@pytest.mark.parametrize("failure", ["PRAGMA query_only = ON", "full"])
def test_a_journal_write_failure_stops_output(
    device: Device,
    journal: Journal,
    estim_unit: SimulatedUnit,
    estim_clock: ManualClock,
    failure: str,
) -> None:
    session = device.start(plan(), journal=journal)
    advance_until_running(session, estim_clock)
    written = len(journal.event_rows(session.id))
    if failure == "full":  # the disk is full: no new page can be allocated
        (pages,) = journal._db.execute("PRAGMA page_count").fetchone()
        journal._db.execute(f"PRAGMA max_page_count = {pages}")
        journal._db.execute("PRAGMA cache_size = 0")
    else:  # the file became read-only
        journal._db.execute(failure)
    for i in range(500):  # amplitude changes until the journal needs a page it cannot have
        try:
            session.set_amplitude(1, 12.5 if i % 2 else 12.0)
        except EstimError:  # the session ended: the journal failed and output was stopped
            break
        estim_clock.advance(0.05)
    else:
        pytest.fail("the journal never failed")
    record = session.wait(timeout=5)
    assert not estim_unit.output_on
    assert record.outcome == "aborted"
    assert (record.stop_reason or "").startswith("journal:")
    assert record.journal_error
    journal._db.execute("PRAGMA query_only = OFF")
    journal._db.execute("PRAGMA max_page_count = 1073741823")
    assert len(journal.event_rows(session.id)) >= written  # nothing already recorded is lost


@pytest.mark.parametrize(
    ("inject", "fault"), [("pull_electrode", Fault.LEAD_OFF), ("over_current", Fault.OVER_CURRENT)]
)
def test_unit_faults(
    device: Device,
    journal: Journal,
    estim_unit: SimulatedUnit,
    estim_clock: ManualClock,
    inject: str,
    fault: Fault,
) -> None:
    session = device.start(plan(), journal=journal)
    advance_until_running(session, estim_clock)
    getattr(estim_unit, inject)(1)
    record = session.wait(timeout=5)
    assert not estim_unit.output_on
    assert record.outcome == "faulted"
    assert record.faults[0].name == fault.name
    assert fault.name in (record.stop_reason or "")
    assert record.delivered_s == pytest.approx(10.0)


def test_estop_on_the_unit(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    from estim.protocol import Button

    session = device.start(plan(), journal=journal)
    advance_until_running(session, estim_clock)
    estim_unit.press(Button.ESTOP)
    record = session.wait(timeout=5)
    assert (record.outcome, record.faults[0].name) == ("faulted", "ESTOP")


def test_unit_reset_mid_session(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    session = device.start(plan(), journal=journal)
    advance_until_running(session, estim_clock)
    estim_unit.reset()
    record = session.wait(timeout=5)
    assert not estim_unit.output_on
    assert record.outcome == "faulted"
    assert "restarted" in (record.stop_reason or "")


def test_a_refused_start_is_recorded_and_raised(
    device: Device, journal: Journal, estim_unit: SimulatedUnit
) -> None:
    estim_unit.pull_electrode(1)
    with pytest.raises(DeviceError, match="electrode not connected"):
        device.start(plan(), journal=journal)
    (row,) = journal.session_rows()
    assert row["outcome"] == "refused"
    assert not estim_unit.output_on


def test_a_journal_that_cannot_be_written_means_no_start(
    device: Device, tmp_path: Path, estim_unit: SimulatedUnit
) -> None:
    journal = Journal(tmp_path / "j.db")
    journal._db.execute("PRAGMA query_only = ON")
    try:
        with pytest.raises(JournalError):
            device.start(plan(), journal=journal)
    finally:
        journal.close()
    from estim.protocol import MessageType

    assert estim_unit.requests_seen[MessageType.START] == 0


def test_an_exception_while_start_waits_for_the_unit_stops_the_session(
    estim_url: str, estim_unit: SimulatedUnit, estim_clock: ManualClock, journal: Journal
) -> None:
    """Ctrl-C while ``device.start`` waits for START to be accepted: the caller never
    gets the session, so it must not go on without one (threaded runner; for asyncio
    see test_aio's cancelled start)."""
    import signal
    import threading

    from estim.device import connect

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    main = threading.main_thread().ident
    assert main is not None
    assert threading.get_ident() == main
    previous = signal.signal(signal.SIGUSR1, interrupt)
    estim_unit.listeners.append(
        lambda entry: entry.kind == "output_on" and signal.pthread_kill(main, signal.SIGUSR1)
    )
    try:
        with connect(estim_url) as device:
            with pytest.raises(KeyboardInterrupt):
                device.start(plan(), journal=journal)
            # sent before the exception went on: the program may be exiting
            assert estim_unit.requests_seen[MessageType.STOP] == 1
            estim_unit.listeners.clear()
            estim_clock.advance(1)
            assert not estim_unit.output_on
            assert device._sessions == {}
    finally:
        signal.signal(signal.SIGUSR1, previous)
    (record,) = journal.query()
    assert record.outcome == "stopped"
    assert record.stop_reason == INTERRUPTED


def test_amplitude_changes_are_recorded(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    session = device.start(plan(), journal=journal)
    advance_until_running(session, estim_clock)
    session.set_amplitude(1, 14.0)
    estim_clock.advance(2)
    assert estim_unit.output_ua(1) == 14_000
    with pytest.raises(OutputLimitError):
        session.set_amplitude(2, 5.0)
    with pytest.raises(OutputLimitError):
        session.set_amplitude(1, 60.0)
    session.stop()
    record = session.wait(timeout=5)
    points = [(p.kind, p.ma) for p in record.amplitude]
    assert (
        points == [("planned", 12.0), ("set", 14.0), ("refused", 60.0)] or ("set", 14.0) in points
    )
    assert ("reached", 14.0) in points


# --- SAFETY.md 7: the journal ------------------------------------------------------------------


def test_the_database_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "estim.db"
    with Journal(path):
        pass
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_wal_and_synchronous_full(journal: Journal) -> None:
    assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_an_unfinished_session_is_interrupted_on_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "estim.db"
    crashed = Journal(path)
    sid = crashed.begin(
        0x1234,
        plan=plan().model_dump(mode="json"),
        unit={"model": "m", "serial_number": "s", "firmware": "f", "simulated": True},
        port="sim://",
        planned_ms=600_000,
    )
    crashed.append(sid, "output_started", {}, unit_ms=10)
    # the host dies here; its lock goes with it (closing the fd is what the OS does)
    os.close(crashed._locks.pop(sid))
    crashed._db.close()
    with Journal(path) as reopened:
        assert reopened.interrupted == [sid]
        row = reopened.session_row(sid)
        assert row is not None
        assert (row["outcome"], row["last_event"]) == ("interrupted", "interrupted")
        assert "last known: output_started at" in row["stop_reason"]


def test_a_session_live_in_another_process_is_not_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "estim.db"
    with Journal(path) as live:
        sid = live.begin(
            0x99,
            plan=plan().model_dump(mode="json"),
            unit={"model": "m", "serial_number": "s", "firmware": "f", "simulated": True},
            port="sim://",
            planned_ms=600_000,
        )
        with Journal(path) as other:
            assert other.interrupted == []
            assert other.session_row(sid)["outcome"] is None  # type: ignore[index]
        live.finish(
            sid,
            outcome="completed",
            stop_reason="x",
            ended_by="unit",
            delivered_ms=1,
            started_utc=None,
            ended_utc="now",
        )


def test_records_can_be_listed_and_filtered(
    device: Device, journal: Journal, estim_clock: ManualClock
) -> None:
    a = device.start(plan(60, patient_ref="P-1"), journal=journal)
    a.wait(timeout=100)
    b = device.start(plan(60, patient_ref="P-2"), journal=journal)
    estim_clock.advance(10)
    b.stop()
    b.wait(timeout=5)
    assert [r["id"] for r in journal.session_rows(patient_ref="P-1")] == [a.id]
    assert [r["id"] for r in journal.session_rows(outcome="stopped")] == [b.id]
    assert len(journal.session_rows(unit_serial="SIM-0001")) == 2
    assert journal_record(journal, a).plan.patient_ref == "P-1"


def test_models_export_json_schema() -> None:
    schema = SessionPlan.model_json_schema()
    assert schema["properties"]["dwell"]
    assert "ChannelPlan" in schema["$defs"]
    assert SessionRecord.model_json_schema()["properties"]["delivered_s"]


def test_a_newer_journal_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "estim.db"
    with Journal(path) as j:
        j._db.execute("PRAGMA user_version = 99")
    with pytest.raises(JournalError, match="schema version 99, newer than this estim"):
        Journal(path)


@pytest.mark.parametrize("runner", RUNNERS)
def test_two_units_two_sessions_one_journal(tmp_path: Path, runner: str) -> None:
    clock = ManualClock()
    connect = connector(runner, clock)
    units = [SimulatedUnit(UnitConfig(serial_number=f"SIM-{i}"), clock=clock) for i in range(2)]
    with (
        Journal(tmp_path / "estim.db") as journal,
        serve(units[0]) as url0,
        serve(units[1]) as url1,
        connect(url0) as d0,
        connect(url1) as d1,
    ):
        s0 = d0.start(plan(60), journal=journal)
        s1 = d1.start(plan(90), journal=journal)
        assert s1.wait(timeout=200).delivered_s == 90.0
        assert s0.wait(timeout=1).delivered_s == 60.0


def test_status_is_polled_as_often_as_asked(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    from estim.protocol import MessageType

    session = device.start(plan(), journal=journal, status_every=0.25)
    estim_clock.advance(10)
    session.stop()
    session.wait(timeout=5)
    assert 40 <= estim_unit.requests_seen[MessageType.GET_STATUS] <= 42
    assert session.last_status is not None


def test_a_silent_unit_gets_a_best_effort_stop_before_the_link_is_declared_lost(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    from estim.sim import FaultWindow, LinkFaults

    session = device.start(plan(), journal=journal)
    advance_until_running(session, estim_clock)
    conn = device.port.sim_connection
    conn.d2h.windows = (FaultWindow(0, 1e9, LinkFaults(drop=1.0)),)  # the unit's answers are lost
    record = session.wait(timeout=5)
    assert record.outcome == "link_lost"
    off = estim_unit.events("output_off")[-1]
    assert off.data["reason"] == "stop"  # the STOP got through, before any watchdog
    assert estim_unit.faults == set()


def test_closing_resends_its_stop_when_the_answer_is_lost(
    estim_url: str, connect: Any, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    """close() sends a last STOP; if its ACK is lost on the line, the STOP is resent
    like any other (found by the full lossy run: asyncio's close waited forever)."""
    from estim.sim import FaultWindow, LinkFaults

    device = connect(estim_url)
    now = estim_clock.now()
    lost = (FaultWindow(now, now + 0.05, LinkFaults(drop=1.0)),)  # the first answer only
    device.port.sim_connection.d2h.windows = lost
    device.close()
    assert estim_unit.requests_seen[MessageType.STOP] == 2


def test_stop_sends_stop_even_when_a_signal_already_asked_for_one(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    from estim.protocol import Button

    busy = {"on": False}

    def slow(event: EventRecord) -> None:
        if busy["on"] and event.kind == "button":
            busy["on"] = False
            estim_clock.sleep(0.4)  # the loop is busy in the callback

    session = device.start(plan(), journal=journal, on_event=slow)
    advance_until_running(session, estim_clock)
    busy["on"] = True
    estim_unit.press(Button.MARK)
    estim_clock.settle()
    session.request_stop(StopReason.HOST_SHUTDOWN, "SIGTERM")
    session.stop()
    assert not estim_unit.output_on
    assert session.wait(timeout=5).outcome == "stopped"


def test_the_record_wait_returns_is_the_record_the_journal_holds(
    device: Device, journal: Journal, estim_clock: ManualClock
) -> None:
    # issue 12: it lacked event 0 and its created_utc differed by 1 ms on main
    session = device.start(plan(60), journal=journal)
    estim_clock.advance(10)
    session.set_amplitude(1, 13.0)
    record = session.wait(timeout=100)
    assert record == journal.get(session.id)
    assert record.events[0].kind == "start_requested"
    assert record.schema_version == 1


def test_utc_stamps_follow_the_session_clock(
    device: Device, journal: Journal, estim_clock: ManualClock
) -> None:
    # issue 12: on a manual clock, utc was wall time while t was virtual
    from datetime import datetime

    record = device.start(plan(60), journal=journal).wait(timeout=100)
    first = datetime.fromisoformat(record.events[0].utc.replace("Z", "+00:00"))
    for event in record.events:
        stamped = datetime.fromisoformat(event.utc.replace("Z", "+00:00"))
        assert (stamped - first).total_seconds() == pytest.approx(event.t, abs=0.001)
    assert record.events[-1].t == pytest.approx(60.0, abs=0.01)


def test_a_short_watchdog_gets_heartbeats_a_quarter_of_it_apart(
    device: Device, journal: Journal, estim_unit: SimulatedUnit
) -> None:
    # PROTOCOL.md 9: at least every watchdog_ms / 4 (docs/SAFETY.md found 100 ms at 0.2 s)
    device.start(plan(60, watchdog=0.2), journal=journal).wait(timeout=100)
    assert estim_unit.faults == set()
    assert estim_unit.events("output_off")[-1].data["max_frame_gap_ms"] <= 50.0


@pytest.mark.parametrize("heartbeat", [0.2, 0.0, -1.0, float("nan")])
def test_a_heartbeat_slower_than_a_quarter_of_the_watchdog_is_refused(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, heartbeat: float
) -> None:
    with pytest.raises(OutputLimitError, match="heartbeat"):
        device.start(plan(60, watchdog=0.5), journal=journal, heartbeat=heartbeat)
    from estim.protocol import MessageType

    assert estim_unit.requests_seen[MessageType.START] == 0


@pytest.mark.parametrize("how", ["estim stop", "device.stop"])
def test_a_start_lost_on_the_line_is_not_resent_after_a_stop(
    device: Device,
    journal: Journal,
    estim_unit: SimulatedUnit,
    estim_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """The first START is lost on the line; the operator stops; the unit, idle, ACKs the
    STOP. The host then resent the START it still had pending, and the unit turned
    output on after the stop was acknowledged (until its watchdog tripped)."""
    import threading

    from estim.protocol import Start

    lost = threading.Event()
    receive = estim_unit._request

    def line(message: Any, now: int) -> None:
        if isinstance(message, Start) and not lost.is_set():
            lost.set()  # its CRC failed on the way: no answer
            return
        receive(message, now)

    monkeypatch.setattr(estim_unit, "_request", line)
    outcome: list[Any] = []

    def start() -> None:
        try:
            outcome.append(device.start(plan(), journal=journal))
        except EstimError as err:
            outcome.append(err)

    # a participant of the clock: while it waits for START's answer, time stands still
    # until this thread moves it
    starter = estim_clock.start_thread(start, "starter")
    assert lost.wait(10.0)
    if how == "estim stop":
        device._stop_for_estim_stop()
    else:
        device.stop()
    assert estim_unit.requests_seen[MessageType.STOP] >= 1
    for _ in range(30):  # 3 s: past every resend and the watchdog
        estim_clock.advance(0.1)
    starter.join(10.0)
    assert not starter.is_alive()
    assert estim_unit.events("output_on") == []
    assert estim_unit.requests_seen[MessageType.START] == 1
    [record] = journal.query()
    assert "output_started" not in [e.kind for e in record.events]
    [error] = outcome  # start() did not hand over a session that never ran
    assert isinstance(error, EstimError)
    if how == "estim stop":  # the session's own stop: its record says so
        assert (record.outcome, record.stop_reason) == ("stopped", "stopped with estim stop")
    else:  # a STOP to the unit behind the session's back: START went unanswered
        assert record.outcome == "link_lost"
        assert record.stop_reason is not None
        assert "never started this session" in record.stop_reason


def test_a_bug_in_the_session_policy_stops_output_and_says_so_instead_of_killing_the_runner(
    device: Device,
    journal: Journal,
    estim_unit: SimulatedUnit,
    estim_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception in the policy (a stray COMPLETED for session 0 before START's ACK
    raised IllegalTransition) killed the I/O thread: no more heartbeats, ``start()``
    never returned, the record never ended; only the unit's watchdog stopped output.
    Whatever the policy raises, the session is stopped as a fault in estim and the
    runner goes on. (The bug here is put in on purpose: the first RAMP_DONE raises.)"""
    from estim.unit_reports import UnitReports

    handle = UnitReports._unit_event

    def buggy(self: UnitReports, item: Any, now: float) -> None:
        if type(item).__name__ == "RampDone":
            raise KeyError("a bug")
        handle(self, item, now)

    monkeypatch.setattr(UnitReports, "_unit_event", buggy)
    session = device.start(plan(), journal=journal)
    estim_clock.advance(6)  # past the 5 s ramp
    record = session.wait(timeout=5)
    assert not estim_unit.output_on
    assert estim_unit.faults == set()  # stopped by the host, not by the unit's watchdog
    assert record.outcome == "aborted"
    assert record.stop_reason is not None
    assert record.stop_reason.startswith("internal error in estim: KeyError('a bug')")
    monkeypatch.undo()
    assert device.status().state.name == "IDLE"  # the runner still answers


def test_a_stray_completed_before_start_is_answered_leaves_no_output_on(
    device: Device,
    journal: Journal,
    estim_unit: SimulatedUnit,
    estim_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A COMPLETED naming session 0 arrives before START's ACK: the session ended on
    it, the unit then took the START, and nothing stopped it or fed its watchdog."""
    from estim.protocol import Completed, Start

    start = estim_unit._start

    def stray_then_start(message: Start, now: int) -> Any:
        estim_unit._emit(Completed, now, session_id=0, delivered_ms=0)
        estim_unit._flush_events()  # out before the START's ACK
        return start(message, now)

    monkeypatch.setattr(estim_unit, "_start", stray_then_start)
    with pytest.raises(EstimError):
        device.start(plan(), journal=journal)
    estim_clock.advance(2)
    assert not estim_unit.output_on
    assert estim_unit.faults == set()  # the host stopped it, not the unit's watchdog
    [record] = journal.query()
    assert record.outcome != "completed"
    monkeypatch.undo()
    assert device.status().state.name == "IDLE"


def test_a_unit_that_ends_its_dwell_early_is_not_recorded_as_a_completed_dwell(
    device: Device,
    journal: Journal,
    estim_unit: SimulatedUnit,
    estim_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A unit whose deadline is wrong sends COMPLETED 30 s into a 10 min dwell: the
    record said "completed, the unit's own deadline ended it" with 30 s of 600."""
    timed = estim_unit._timed

    def early(*args: Any) -> Any:
        due = timed(*args)
        live = estim_unit._session
        if live is None:
            return due
        at = live.start_us + 30_000_000
        return (at, -1, estim_unit._complete) if due is None or at <= due[0] else due

    monkeypatch.setattr(estim_unit, "_timed", early)
    session = device.start(plan(), journal=journal)
    estim_clock.advance(31)
    record = session.wait(timeout=5)
    assert record.delivered_s == pytest.approx(30.0, abs=0.1)
    assert record.outcome == "stopped"
    assert record.stop_reason == (
        "the unit reported its dwell complete after 30 s of 600 s by its own clock: it "
        "ended output early, so the dwell was not complete"
    )


def test_a_unit_that_acks_a_lower_amplitude_and_keeps_the_higher_one_is_stopped(
    device: Device,
    journal: Journal,
    estim_unit: SimulatedUnit,
    estim_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator lowers 12 -> 5 mA; the unit ACKs and keeps 12 (a stuck DAC, a
    firmware bug). Every amplitude ever judged passed the check, so 30 s of STATUS
    polls saw nothing wrong and the record said 5 mA."""
    from estim.protocol import Ack, SetAmplitude

    set_amplitude = estim_unit._set_amplitude

    def keeps_higher(message: SetAmplitude, now: int) -> Any:
        live = estim_unit._session
        channel = live.channels.get(message.channel) if live is not None else None
        if channel is not None and message.amplitude_ua < channel.setpoint:
            return Ack(request_type=int(message.TYPE), state=estim_unit._state)
        return set_amplitude(message, now)

    monkeypatch.setattr(estim_unit, "_set_amplitude", keeps_higher)
    session = device.start(plan(), journal=journal)
    advance_until_running(session, estim_clock)
    session.set_amplitude(1, 5.0)
    estim_clock.advance(3)  # a STATUS poll or two
    record = session.wait(timeout=5)
    assert not estim_unit.output_on
    assert record.outcome == "faulted"
    assert record.stop_reason is not None
    assert record.stop_reason.startswith(
        "the unit reports channel 1 set to 12 mA, but this session set 5 mA"
    )


@pytest.mark.parametrize("value", ["Decimal", "Fraction"])
def test_an_amplitude_of_another_number_type_is_refused_and_the_session_goes_on(
    device: Device, journal: Journal, estim_clock: ManualClock, value: str
) -> None:
    """Refused, but its refusal was journaled as given: not JSON, so the journal
    writer failed and the session ended "aborted" on a refused request."""
    from decimal import Decimal
    from fractions import Fraction

    ma = Decimal("5") if value == "Decimal" else Fraction(5, 1)
    session = device.start(plan(), journal=journal)
    advance_until_running(session, estim_clock)
    with pytest.raises(OutputLimitError):
        session.set_amplitude(1, ma)  # type: ignore[arg-type]
    estim_clock.advance(3)
    assert session.state == SessionState.RUNNING
    session.stop()
    record = session.wait(timeout=5)
    assert (record.outcome, record.stop_reason) == ("stopped", "operator")
    [refused] = [e for e in record.events if e.kind == "amplitude_refused"]
    assert refused.data["ma"] == repr(ma)


def test_an_amplitude_the_unit_refuses_is_not_recorded_as_set(
    device: Device, journal: Journal, estim_unit: SimulatedUnit, estim_clock: ManualClock
) -> None:
    """During the unit's end ramp the host (still live) sends a change, the unit
    refuses it BAD_STATE: the record's amplitude points listed it as set, and the
    refusal said "the unit is busy with a session; stop it first"."""
    session = device.start(plan(dwell=60), journal=journal)
    estim_clock.advance(57)  # in the 5 s end ramp
    assert estim_unit.state.name == "RAMPING_DOWN"
    with pytest.raises(DeviceError, match="ramping down at the end of the dwell"):
        session.set_amplitude(1, 10.0)
    record = session.wait(timeout=10)
    assert ("set", 10.0) not in [(p.kind, p.ma) for p in record.amplitude]
    assert [e.kind for e in record.events if e.kind.startswith("amplitude")] == [
        "amplitude_set",
        "amplitude_refused",
    ]


def test_a_unit_that_acks_stop_with_output_still_on_is_a_fault_not_a_stop(
    device: Device,
    journal: Journal,
    estim_unit: SimulatedUnit,
    estim_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stuck output stage: the unit ACKs STOP, its ACK saying RUNNING, and keeps
    output on. ``stop()`` returned as if output were off and the record said
    "stopped, operator"; only the unit's watchdog ended output, and the record never
    said so."""
    monkeypatch.setattr(estim_unit, "_stop", lambda reason, now: None)
    session = device.start(plan(), journal=journal)
    advance_until_running(session, estim_clock)
    with pytest.raises(DeviceFault, match="acknowledged STOP but its output is still on"):
        session.stop()
    record = session.wait(timeout=5)
    assert record.outcome == "faulted"
    assert record.stop_reason is not None
    assert record.stop_reason.startswith(
        "the unit acknowledged STOP but its output is still on (RUNNING)"
    )
    estim_clock.advance(1)
    assert not estim_unit.output_on  # no heartbeats since: its watchdog ended output
