"""Many sessions over a line that loses and corrupts about 1% of its bytes (issue 7).

The unit is served in-process on a manual clock; every connection to it goes
through ``?drop=0.005&corrupt=0.005&seed=N`` (each direction), so about one frame in
six is lost on the way. The host connects with 8 retries per request, runs
sessions of 60-150 s on one or two channels, stops some of them early at a random
instant, changes amplitude in some, and reconnects (clearing a latched fault)
whenever the link or the unit gives up. Afterwards, from the unit's own log and
from the journal:

- zero over-dwell: no period of output lasted longer than its plan;
- zero unrecorded sessions: every period of output has a journal session with its
  start record;
- every session has an outcome, every abnormal end a stop reason, and a delivered
  time (when known) that is the unit's own figure and within the plan;
- output never outlived a silence longer than the watchdog period.

Scale (tests/reliability_helpers.py): ``CI_SESSIONS`` sessions by default,
``FULL_SESSIONS`` with ``ESTIM_RELIABILITY=full``, or a multiple of the CI count.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from estim.clock import ManualClock
from estim.device import Device, connect
from estim.errors import DeviceError, EstimError, LinkError, OutputLimitError, UnitBusy
from estim.journal import Journal
from estim.protocol import State
from estim.record import SessionRecord
from estim.sim import FaultWindow, LinkFaults, SimulatedUnit

from .reliability_helpers import SEED, make_plan, output_periods, scaled

CI_SESSIONS = 24
FULL_SESSIONS = 500
#: per direction: 0.5% of bytes dropped and 0.5% corrupted
LOSS = "drop=0.005&corrupt=0.005"


class LossyHost:
    """The host side: a device on a lossy line, reconnected whenever it is lost."""

    def __init__(self, url: str, unit: SimulatedUnit) -> None:
        self.url = url
        self.unit = unit
        self.connections = 0
        self.failed_connects = 0
        self.device: Device | None = None
        self._lines: list[Any] = []

    def line_stats(self, name: str) -> int:
        """A ``LineStats`` field summed over both directions of every connection."""
        return sum(getattr(line.stats, name) for line in self._lines)

    def ready(self) -> Device:
        """A connected device, with no fault latched on the unit."""
        for _ in range(20):
            if self.device is not None and self.device.lost is not None:
                self.close()
            if self.device is None:
                self.connections += 1
                try:
                    self.device = connect(
                        f"{self.url}?{LOSS}&seed={SEED + self.connections}", retries=8
                    )
                except LinkError:
                    self.failed_connects += 1
                    continue
                conn = self.device.port.sim_connection
                self._lines += [conn.h2d, conn.d2h]
            if self.unit.state == State.FAULT:
                try:
                    self.device.clear_fault()
                except (LinkError, DeviceError):
                    continue
            return self.device
        raise AssertionError("could not get a working connection in 20 attempts")

    def close(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None


def test_many_sessions_over_a_lossy_line(
    estim_unit: SimulatedUnit, estim_url: str, estim_clock: ManualClock, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    sessions = scaled(CI_SESSIONS, FULL_SESSIONS)
    host = LossyHost(estim_url, estim_unit)
    records: list[SessionRecord] = []
    refused_at_start = 0
    with Journal(tmp_path / "estim.db") as journal:
        try:
            for _ in range(sessions):
                device = host.ready()
                channels = rng.choice([(1,), (2,), (1, 2)])
                plan = make_plan(
                    rng.randint(60, 150),
                    {ch: rng.randint(10, 120) / 10 for ch in channels},
                    ramp=rng.choice([2.0, 5.0]),
                )
                try:
                    session = device.start(plan, journal=journal)
                except (DeviceError, LinkError) as err:
                    refused_at_start += 1
                    if isinstance(err, DeviceError):  # "busy with a session; stop it first"
                        with contextlib.suppress(LinkError):
                            device.stop()
                    estim_clock.advance(1)  # the operator reads the message
                    continue
                action = rng.random()
                if action < 0.4:  # the operator stops it early
                    estim_clock.advance(rng.uniform(0, plan.dwell))
                    session.stop()
                elif action < 0.6:  # and changes amplitude first
                    estim_clock.advance(rng.uniform(0, plan.dwell / 2))
                    try:
                        session.set_amplitude(channels[0], rng.randint(0, 120) / 10)
                    except (EstimError, OutputLimitError):
                        pass
                records.append(session.wait(timeout=plan.dwell + 60))
            estim_clock.advance(5)  # any output the host let go of: the watchdog's turn
        finally:
            host.close()
        rows = {r["id"]: r for r in journal.session_rows()}
        events = {sid: journal.event_rows(sid) for sid in rows}

    periods = output_periods(estim_unit.log)
    assert not estim_unit.output_on
    assert all(p.off_t is not None for p in periods)

    # the line really was lossy, and the sessions really ran
    assert host.line_stats("dropped") > 100
    assert host.line_stats("corrupted") > 100
    assert len(periods) >= sessions // 2
    assert len(records) >= sessions // 2

    over_dwell = [
        p
        for p in periods
        if p.off_t - p.on_t > p.dwell_ms / 1000 + 1e-6  # type: ignore[operator]
        or p.dwell_ms != rows.get(p.journal_id, {}).get("planned_ms", p.dwell_ms)
    ]
    assert over_dwell == []

    unrecorded = [
        p
        for p in periods
        if p.journal_id not in rows
        or not events[p.journal_id]
        or events[p.journal_id][0]["kind"] != "start_requested"
    ]
    assert unrecorded == []

    silent_too_long = [
        p
        for p in periods
        if (p.max_frame_gap_ms or 0) > json.loads(rows[p.journal_id]["plan"])["watchdog"] * 1000
    ]
    assert silent_too_long == []

    no_outcome = [r["id"] for r in rows.values() if r["outcome"] is None]
    assert no_outcome == []
    no_reason = [
        (r["id"], r["outcome"])
        for r in rows.values()
        if r["outcome"] != "completed" and not r["stop_reason"]
    ]
    assert no_reason == []

    unit_delivered = {p.journal_id: p.delivered_ms for p in periods}
    wrong_delivered = [
        (r.id, r.delivered_s, unit_delivered.get(r.id))
        for r in records
        if r.delivered_s is not None
        and (r.delivered_s > r.planned_s or round(r.delivered_s * 1000) != unit_delivered.get(r.id))
    ]
    assert wrong_delivered == []
    internal = [(r.id, r.stop_reason) for r in records if "internal error" in (r.stop_reason or "")]
    assert internal == []
    for record in records:  # the journal says what the session said
        assert rows[record.id]["outcome"] == record.outcome
    outcomes = Counter(r["outcome"] for r in rows.values())
    print(  # shown with pytest -s or -rP
        f"lossy line: {sessions} sessions asked, {len(periods)} periods of output, "
        f"{refused_at_start} starts refused or lost, {host.connections} connections; "
        f"outcomes {dict(outcomes)}; ends at the unit {dict(Counter(p.reason for p in periods))}; "
        f"bytes {host.line_stats('sent')} sent, {host.line_stats('dropped')} dropped, "
        f"{host.line_stats('corrupted')} corrupted"
    )


def test_a_reconnected_host_does_not_keep_an_orphaned_output_alive(
    estim_unit: SimulatedUnit, estim_url: str, estim_clock: ManualClock, tmp_path: Path
) -> None:
    with Journal(tmp_path / "estim.db") as journal:
        device = connect(estim_url)
        session = device.start(make_plan(60, {1: 5.0}, ramp=2.0), journal=journal)
        estim_clock.advance(10)
        assert estim_unit.output_ua(1) == 5_000
        # the unit's answers stop arriving; the host's requests still reach the unit
        lines = device.port.sim_connection
        lines.d2h.windows = (FaultWindow(0, 1e9, LinkFaults(drop=1.0)),)
        record = session.wait(timeout=5)
        let_go = estim_clock.now()
        assert record.outcome == "link_lost"
        device.close()
        # the host reconnects at once, as an application with auto-reconnect does,
        # shows the unit's status every 200 ms and starts again
        with connect(estim_url) as again:
            for _ in range(10):
                estim_clock.advance(0.2)
                again.status()
                with contextlib.suppress(DeviceError, UnitBusy):  # (once one runs)
                    again.start(make_plan(60, {1: 5.0}, ramp=2.0), journal=journal)
        # the old session's output ended within the watchdog period of letting go,
        # whatever the new connection did (its own session is a new, live one)
        (old,) = [p for p in output_periods(estim_unit.log) if p.session_id == int(record.id, 16)]
        assert old.off_t is not None
        assert old.off_t <= let_go + 0.5 + 1e-6
