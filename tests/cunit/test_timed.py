"""Real time on the C reference unit: a short dwell completes with output zero at the
deadline, and a host that stops sending HEARTBEATs gets a WATCHDOG fault. Times
come from the unit's own --json log (CLOCK_MONOTONIC, like time.monotonic()) and
are compared with generous bounds; nothing here sleeps."""

from __future__ import annotations

import time
from typing import Any

from estim.protocol import ClearFault, ConfigureChannel, GetStatus, Heartbeat, Mode, Start, Waveform
from tests.cbuild import Build

from .refunit import RefUnit

SESSION = 0x5EED0001
TARGET_UA = 1000  # 1 mA
RAMP_MS = 500
DWELL_MS = 2000
STEP_UA = 100
SLACK_S = 0.25  # a loaded CI machine may wake the unit late; never early


def configure(unit: RefUnit) -> None:
    ack = unit.exchange(
        ConfigureChannel(
            seq=1,
            channel=1,
            waveform=Waveform.BIPHASIC_SYMMETRIC,
            mode=Mode.CONTINUOUS,
            frequency_dhz=20,
            pulse_width_us=250,
            amplitude_ua=TARGET_UA,
            alt_frequency_dhz=0,
            switch_ms=0,
        )
    )
    assert [m["type"] for m in ack] == ["ACK"]


def start(unit: RefUnit, watchdog_ms: int) -> None:
    got = unit.exchange(
        Start(
            seq=2,
            session_id=SESSION,
            dwell_ms=DWELL_MS,
            ramp_ms=RAMP_MS,
            watchdog_ms=watchdog_ms,
            channel_mask=1,
        )
    )
    assert [m["type"] for m in got] == ["ACK", "OUTPUT_STARTED"]


def events_until(unit: RefUnit, last: str, heartbeats: bool) -> list[dict[str, Any]]:
    """Every event up to ``last``, sending a HEARTBEAT naming the session every 100 ms
    (as estim does) if asked to."""
    seen: list[dict[str, Any]] = []
    seq = 100
    sent = give_up = time.monotonic()
    give_up += 10.0  # far past any dwell here
    while not any(m["type"] == last for m in seen):
        assert time.monotonic() < give_up, seen
        seen += unit.read()
        if heartbeats and time.monotonic() - sent >= 0.1:
            seq += 1
            sent = unit.send(Heartbeat(seq=seq, session_id=SESSION))
    # a HEARTBEAT in flight at the deadline is rightly refused NO_SESSION
    return [m for m in seen if m["type"] not in ("ACK", "NACK")]


def test_a_short_dwell_completes_with_output_zero_at_the_deadline(cunit: Build) -> None:
    with RefUnit(cunit.unit, "dwell_min_s=2") as unit:
        configure(unit)
        start(unit, watchdog_ms=500)
        events = events_until(unit, "COMPLETED", heartbeats=True)
        assert [e["type"] for e in events] == ["RAMP_DONE", "RAMP_DOWN_STARTED", "COMPLETED"]
        done = events[-1]
        assert done["session_id"] == SESSION
        assert done["delivered_ms"] == DWELL_MS
        assert events[1]["remaining_ms"] <= RAMP_MS
        off = unit.wait_for(lambda e: e["kind"] == "output_off")
    on = next(e for e in unit.lines if e["kind"] == "output_on")
    deadline = on["t"] + DWELL_MS / 1000
    assert off["reason"] == "completed"
    assert off["delivered_ms"] == DWELL_MS
    assert abs(off["t"] - deadline) < 1e-5  # the unit's deadline, by its own clock
    levels = [e for e in unit.lines if e["kind"] == "level" and e["t"] >= on["t"]]
    assert levels[-1]["ua"] == 0
    assert levels[-1]["t"] <= deadline + 1e-5  # zero by the deadline, not after
    assert max(e["ua"] for e in levels) == TARGET_UA
    for e in levels:  # never above the envelope of section 7, plus one step
        since, left = e["t"] - on["t"], deadline - e["t"]
        envelope = TARGET_UA * min(since, left, RAMP_MS / 1000) / (RAMP_MS / 1000)
        assert e["ua"] <= envelope + STEP_UA + 1, e


def test_a_silent_host_gets_a_watchdog_fault_within_watchdog_ms(cunit: Build) -> None:
    watchdog_ms = 300
    with RefUnit(cunit.unit, "dwell_min_s=2") as unit:
        configure(unit)
        start(unit, watchdog_ms=watchdog_ms)
        fed = [unit.exchange(Heartbeat(seq=10 + i, session_id=SESSION)) for i in range(3)]
        assert all(m["type"] == "ACK" for got in fed for m in got)
        last_sent = unit.send(GetStatus(seq=20))  # not a HEARTBEAT: feeds nothing
        events = events_until(unit, "STOPPED", heartbeats=False)
        assert [e["type"] for e in events if e["type"] != "STATUS"] == ["FAULT", "STOPPED"]
        fault, stopped = events[-2:]
        assert fault["fault"] == "WATCHDOG"
        assert stopped["reason"] == "FAULT"
        off = unit.wait_for(lambda e: e["kind"] == "output_off")
        watchdog = next(e for e in unit.lines if e["kind"] == "watchdog")
        assert off["reason"] == "fault:WATCHDOG"
        assert watchdog["last_frame"] <= last_sent  # fed by the last HEARTBEAT, not later
        # the model instant (9.2): exactly watchdog_ms after the last feed, in whole us
        assert round(off["t"] * 1e6) - round(watchdog["last_frame"] * 1e6) == watchdog_ms * 1000
        # and the output really went off (set_output, at the time the unit acted) soon after
        zero = next(
            e
            for e in unit.lines
            if e["kind"] == "level" and e["channel"] == 1 and e["ua"] == 0 and e["t"] >= off["t"]
        )
        assert zero["t"] - last_sent <= watchdog_ms / 1000 + SLACK_S
        status = unit.exchange(GetStatus(seq=21))[0]
        assert status["state"] == "FAULT"
        assert status["faults"] == 1 << (3 - 1)
        assert unit.exchange(ClearFault(seq=22))[0]["state"] == "IDLE"
        assert unit.exchange(GetStatus(seq=23))[0]["faults"] == 0
