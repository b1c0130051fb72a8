"""Faults on the C reference unit, injected by its harness: each turns output off,
sends FAULT then STOPPED(FAULT), latches until CLEAR_FAULT, and refuses what 6.1
says while latched."""

from __future__ import annotations

from dataclasses import replace

import pytest

from estim.protocol import (
    ClearFault,
    ConfigureChannel,
    GetStatus,
    Heartbeat,
    Mode,
    SetAmplitude,
    Start,
    Stop,
    Waveform,
)
from tests.cbuild import Build

from .refunit import RefUnit

SESSION = 0x0FA17001
CODES = {"LEAD_OFF": 1, "OVER_CURRENT": 2, "WATCHDOG": 3, "ESTOP": 4, "INTERNAL": 5}
CONFIGURE = ConfigureChannel(
    seq=1,
    channel=1,
    waveform=Waveform.BIPHASIC_SYMMETRIC,
    mode=Mode.CONTINUOUS,
    frequency_dhz=20,
    pulse_width_us=250,
    amplitude_ua=1000,
    alt_frequency_dhz=0,
    switch_ms=0,
)
START = Start(
    seq=2, session_id=SESSION, dwell_ms=60000, ramp_ms=500, watchdog_ms=2000, channel_mask=1
)


@pytest.mark.parametrize(
    ("option", "fault", "channel", "before"),
    [
        ("lead_off_at=0.1", "LEAD_OFF", 1, []),
        ("over_current_at=0.1:1", "OVER_CURRENT", 1, []),
        ("estop_at=0.1", "ESTOP", 0, ["BUTTON_PRESSED"]),
        ("internal_at=0.1", "INTERNAL", 0, []),
    ],
)
def test_a_fault_stops_output_and_latches(
    cunit: Build, option: str, fault: str, channel: int, before: list[str]
) -> None:
    with RefUnit(cunit.unit, option) as unit:
        assert unit.exchange(CONFIGURE)[0]["type"] == "ACK"
        assert [m["type"] for m in unit.exchange(START)] == ["ACK", "OUTPUT_STARTED"]
        events = unit.frames(lambda m: m["type"] == "STOPPED")
        assert [m["type"] for m in events] == [*before, "FAULT", "STOPPED"]
        assert events[-2]["fault"] == fault
        assert events[-2]["channel"] == channel
        assert events[-2]["session_id"] == SESSION
        assert events[-1]["reason"] == "FAULT"
        off = unit.wait_for(lambda e: e["kind"] == "output_off")
        assert off["reason"] == f"fault:{fault}"
        status = unit.exchange(GetStatus(seq=3))[0]
        assert status["state"] == "FAULT"
        assert status["faults"] == 1 << (CODES[fault] - 1)
        assert status["fault_channel"] == channel
        assert [c["amplitude_ua"] for c in status["channels"]] == [0, 0]
        refused = [
            unit.exchange(m)[0]
            for m in (
                replace(CONFIGURE, seq=4),
                replace(START, seq=5, session_id=SESSION + 1),
                SetAmplitude(seq=6, session_id=SESSION, channel=1, amplitude_ua=500),
                Heartbeat(seq=7, session_id=SESSION),
            )
        ]
        assert [(m["type"], m["error"]) for m in refused] == [("NACK", "FAULT_LATCHED")] * 4
        assert unit.exchange(Heartbeat(seq=8, session_id=0))[0]["type"] == "ACK"
        assert unit.exchange(Stop(seq=9, reason=1)) == [
            {"type": "ACK", "seq": 9, "request_type": "STOP", "state": "FAULT"}
        ]
        assert unit.exchange(ClearFault(seq=10))[0]["state"] == "IDLE"
        status = unit.exchange(GetStatus(seq=11))[0]
        assert (status["state"], status["faults"], status["fault_channel"]) == ("IDLE", 0, 0)
        # the faulted session has ended for good
        again = unit.exchange(replace(START, seq=12))[0]
        assert (again["type"], again["error"]) == ("NACK", "SESSION_ENDED")


def test_an_open_electrode_refuses_start(cunit: Build) -> None:
    with RefUnit(cunit.unit, "impedance_ohm=20001") as unit:
        assert unit.exchange(CONFIGURE)[0]["type"] == "ACK"
        nack = unit.exchange(START)
        assert nack == [
            {
                "type": "NACK",
                "seq": 2,
                "request_type": "START",
                "error": "LEAD_OFF",
                "field": "CHANNEL",
                "channel": 1,
                "state": "IDLE",
            }
        ]
