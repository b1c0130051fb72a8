"""Journals with real sessions in them, for the records, export and CLI tests.

Each session runs on a simulated unit on a manual clock (a 1-minute session takes
a fraction of a second), and everything is closed before the journal is handed
over, so a test reads a finished file the way ``estim history`` would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from estim.clock import ManualClock
from estim.device import connect
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.record import SessionRecord
from estim.session import Session
from estim.sim import SimulatedUnit, UnitConfig, serve

CH1 = ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=12)
DENSE_DISPERSE = ChannelPlan(
    channel=2,
    frequency_hz=2,
    pulse_width_us=200,
    amplitude_ma=8,
    mode="dense_disperse",
    alt_frequency_hz=100,
    switch_s=3,
)
BURST = ChannelPlan(
    channel=3,
    frequency_hz=100,
    pulse_width_us=150,
    amplitude_ma=6,
    mode="burst",
    alt_frequency_hz=2,
    switch_s=0.1,
    waveform="biphasic_asymmetric",
)


def make_plan(**changes: Any) -> SessionPlan:
    fields: dict[str, Any] = {
        "dwell": 60,
        "ramp": 5,
        "channels": [CH1],
        "patient_ref": "P-0042",
        "clinician": "Dr Ada Lovelace",
        "site": "left vastus lateralis",
        "condition": "knee osteoarthritis",
    }
    fields.update(changes)
    return SessionPlan(**fields)


Steer = Callable[[Session, ManualClock, SimulatedUnit], None]


def run(
    path: Path,
    plan: SessionPlan,
    steer: Steer | None = None,
    *,
    channels: int = 2,
    serial: str = "SIM-0001",
) -> SessionRecord:
    """Run ``plan`` to its end on a fresh simulated unit; ``steer`` acts mid-session."""
    clock = ManualClock()
    unit = SimulatedUnit(UnitConfig(channels=channels, serial_number=serial), clock=clock)
    with Journal(path) as journal, serve(unit) as url, connect(url) as device:
        session = device.start(plan, journal=journal)
        if steer is not None:
            steer(session, clock, unit)
        session.wait(timeout=700)
        return journal.get(session.id)


def stop_at(seconds: float) -> Steer:
    def steer(session: Session, clock: ManualClock, unit: SimulatedUnit) -> None:
        clock.advance(seconds)
        session.stop()

    return steer


def lead_off_at(seconds: float) -> Steer:
    def steer(session: Session, clock: ManualClock, unit: SimulatedUnit) -> None:
        clock.advance(seconds)
        unit.pull_electrode(1)

    return steer


def change_amplitude(seconds: float, ma: float) -> Steer:
    def steer(session: Session, clock: ManualClock, unit: SimulatedUnit) -> None:
        clock.advance(seconds)
        session.set_amplitude(1, ma)

    return steer


def varied_journal(path: Path) -> list[SessionRecord]:
    """Five sessions, oldest first: completed with an amplitude change (two channels,
    dense-disperse), stopped early, faulted, completed for another patient on three
    channels (burst), and refused (an open electrode)."""
    records = [
        run(path, make_plan(channels=[CH1, DENSE_DISPERSE]), change_amplitude(20, 14)),
        run(path, make_plan(clinician="Dr Grace Hopper"), stop_at(10)),
        run(path, make_plan(), lead_off_at(30)),
        run(
            path,
            make_plan(
                patient_ref="P-0007", channels=[CH1, DENSE_DISPERSE, BURST], notes="tolerated well"
            ),
            channels=4,
            serial="SIM-0002",
        ),
    ]
    records.append(_refused(path, make_plan(patient_ref="P-0009", clinician=None)))
    return records


def _refused(path: Path, plan: SessionPlan) -> SessionRecord:
    from estim.errors import DeviceError

    clock = ManualClock()
    unit = SimulatedUnit(UnitConfig(), clock=clock)
    unit.pull_electrode(1)
    with Journal(path) as journal, serve(unit) as url, connect(url) as device:
        try:
            device.start(plan, journal=journal)
        except DeviceError:
            pass
        (record,) = journal.query(limit=1)
        return record


def eight_channels(path: Path) -> SessionRecord:
    channels = [
        ChannelPlan(channel=n, frequency_hz=2, pulse_width_us=250, amplitude_ma=n)
        for n in range(1, 9)
    ]
    return run(path, make_plan(channels=channels), channels=8, serial="SIM-0008")


def live_and_interrupted(path: Path) -> tuple[SessionRecord, SessionRecord, SessionRecord]:
    """A live session (read by the journal that holds it), and two the host died in:
    one after output went on, one before."""
    import os

    unit = {
        "model": "estim-sim",
        "serial_number": "SIM-0003",
        "firmware": "sim-1.0",
        "simulated": True,
    }
    plan = make_plan().model_dump(mode="json")
    crashed = Journal(path)
    with_output = crashed.begin(0x0D1E0001, plan=plan, unit=unit, port="sim://", planned_ms=60_000)
    crashed.append(
        with_output, "output_started", {"dwell_ms": 60_000, "channel_mask": 1}, unit_ms=0
    )
    without_output = crashed.begin(
        0x0D1E0002, plan=plan, unit=unit, port="sim://", planned_ms=60_000
    )
    for sid in (with_output, without_output):  # the host dies: the OS drops its locks
        os.close(crashed._locks.pop(sid))
    crashed._db.close()
    with Journal(path) as journal:
        live_id = journal.begin(0x11FE0001, plan=plan, unit=unit, port="sim://", planned_ms=60_000)
        journal.append(
            live_id, "output_started", {"dwell_ms": 60_000, "channel_mask": 1}, unit_ms=0
        )
        live = journal.get(live_id)
        journal.finish(
            live_id,
            outcome="stopped",
            stop_reason="operator",
            ended_by=None,
            delivered_ms=1000,
            started_utc=None,
            ended_utc="2026-11-22T09:00:00.000Z",
        )
        return live, journal.get(with_output), journal.get(without_output)
