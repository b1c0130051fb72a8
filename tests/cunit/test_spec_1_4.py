"""PROTOCOL.md 1.4's rules on the C reference unit, in real time over a pty (the
same rules as tests/test_spec_1_4.py on the simulator): an ended session never
restarts however many sessions later; a START naming the live session with other
fields is refused; events carry their model instants; a copy answered from memory
does not refresh it; the clock starts at clock_start_ms and wraps at 2^32; an
electrode open from power-up (open_channel). Times are the unit's own time_ms."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from estim.protocol import (
    ConfigureChannel,
    GetStatus,
    Heartbeat,
    Message,
    Mode,
    SetAmplitude,
    Start,
    Stop,
    Waveform,
)
from tests.cbuild import Build

from .refunit import RefUnit

ENDED = 32  # ESTIM_ENDED_SESSIONS
TARGET_UA = 1000


class Host:
    """Numbers requests and picks increasing session ids, as PROTOCOL.md 10 asks."""

    def __init__(self, unit: RefUnit) -> None:
        self.unit = unit
        self.seq = 100

    def ask(self, message: Message, seq: int | None = None) -> list[dict[str, Any]]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return self.unit.exchange(replace(message, seq=seq))

    def events_until(self, session_id: int, last: str) -> list[dict[str, Any]]:
        """Events up to ``last``, with a HEARTBEAT naming the session every 100 ms."""
        seen: list[dict[str, Any]] = []
        sent = give_up = time.monotonic()
        give_up += 10.0
        while not any(m["type"] == last for m in seen):
            assert time.monotonic() < give_up, seen
            seen += self.unit.read()
            if time.monotonic() - sent >= 0.1:
                self.seq += 1
                sent = self.unit.send(Heartbeat(seq=self.seq, session_id=session_id))
        return [m for m in seen if m["type"] not in ("ACK", "NACK")]

    def configure(
        self, amplitude_ua: int = TARGET_UA, seq: int | None = None, channel: int = 1
    ) -> list[dict[str, Any]]:
        return self.ask(
            ConfigureChannel(
                channel=channel,
                waveform=Waveform.BIPHASIC_SYMMETRIC,
                mode=Mode.CONTINUOUS,
                frequency_dhz=20,
                pulse_width_us=250,
                amplitude_ua=amplitude_ua,
                alt_frequency_dhz=0,
                switch_ms=0,
            ),
            seq,
        )

    def start(self, session_id: int, **fields: int) -> list[dict[str, Any]]:
        values = {"dwell_ms": 60_000, "ramp_ms": 500, "watchdog_ms": 2_000, "channel_mask": 1}
        values.update(fields)
        return self.ask(Start(session_id=session_id, **values))

    def stop(self) -> list[dict[str, Any]]:
        return self.ask(Stop(reason=1))


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


def test_an_ended_start_is_refused_after_three_times_the_list(cunit: Build) -> None:
    with RefUnit(cunit.unit) as unit:
        host = Host(unit)
        assert types(host.configure()) == ["ACK"]
        first = 1_000
        assert types(host.start(first)) == ["ACK", "OUTPUT_STARTED"]
        host.stop()
        replays = []
        for n in range(1, 3 * ENDED + 2):
            assert types(host.start(first + 10 * n)) == ["ACK", "OUTPUT_STARTED"]
            host.stop()
            if n in (1, ENDED - 1, ENDED, ENDED + 1, 3 * ENDED + 1):
                replays += host.start(first)
        assert {(r["type"], r["error"], r["field"]) for r in replays} == {
            ("NACK", "SESSION_ENDED", "SESSION_ID")
        }
        # the floor: an id below it that never ran is refused; one above it is not
        below = host.start(first + 5)
        assert (below[0]["type"], below[0]["error"]) == ("NACK", "SESSION_ENDED")
        probe = host.start(first + 10 * (3 * ENDED + 1) + 1, channel_mask=0)
        assert (probe[0]["error"], probe[0]["field"]) == ("OUT_OF_RANGE", "CHANNEL_MASK")
    assert sum(1 for e in unit.lines if e["kind"] == "output_on") == 3 * ENDED + 2


def test_a_start_naming_the_live_session_with_other_fields_is_refused(cunit: Build) -> None:
    with RefUnit(cunit.unit) as unit:
        host = Host(unit)
        host.configure()
        host.configure(seq=50, channel=2)
        assert types(host.start(0x5E55)) == ["ACK", "OUTPUT_STARTED"]
        for other in (
            {"dwell_ms": 30_000},
            {"ramp_ms": 600},
            {"watchdog_ms": 600},
            {"channel_mask": 3},
        ):
            (nack,) = host.start(0x5E55, **other)
            assert (nack["type"], nack["error"], nack["field"], nack["channel"]) == (
                "NACK",
                "BAD_STATE",
                "NONE",
                0,
            ), other
        assert types(host.start(0x5E55)) == ["ACK"]  # the same fields: a retransmission
        (status,) = host.ask(GetStatus())
        assert status["remaining_ms"] > 59_000  # the first START's dwell, untouched
        host.stop()
    assert sum(1 for e in unit.lines if e["kind"] == "output_on") == 1


def test_events_carry_their_model_instants(cunit: Build) -> None:
    """RAMP_DONE at t0 + ramp, RAMP_DOWN_STARTED at deadline - ramp with remaining_ms
    = ramp, COMPLETED at the deadline: exactly, by the unit's clock, however late
    its loop noticed them (9.2)."""
    with RefUnit(cunit.unit, "dwell_min_s=2") as unit:
        host = Host(unit)
        host.configure()
        got = host.start(0x5E56, dwell_ms=2_000, watchdog_ms=500)
        t0 = got[1]["time_ms"]
        events = host.events_until(0x5E56, "COMPLETED")
        assert [(e["type"], e["time_ms"] - t0) for e in events] == [
            ("RAMP_DONE", 500),
            ("RAMP_DOWN_STARTED", 1_500),
            ("COMPLETED", 2_000),
        ]
        assert events[1]["remaining_ms"] == 500
        assert events[2]["delivered_ms"] == 2_000


def test_a_raised_level_meets_the_end_ramp_with_remaining_rounded_up(cunit: Build) -> None:
    """1.1 mA at 1 mA / 500 ms: the line reaches it 550 ms before the deadline."""
    with RefUnit(cunit.unit, "dwell_min_s=2") as unit:
        host = Host(unit)
        host.configure()
        got = host.start(0x5E57, dwell_ms=2_000, watchdog_ms=500)
        t0 = got[1]["time_ms"]
        host.ask(SetAmplitude(session_id=0x5E57, channel=1, amplitude_ua=1_100))
        events = host.events_until(0x5E57, "RAMP_DOWN_STARTED")
        (down,) = [e for e in events if e["type"] == "RAMP_DOWN_STARTED"]
        assert (down["time_ms"] - t0, down["remaining_ms"]) == (1_450, 550)
        host.stop()


def configured_amplitude(host: Host, session_id: int) -> int:
    """Channel 1's configured target, read as its setpoint in a session."""
    assert types(host.start(session_id)) == ["ACK", "OUTPUT_STARTED"]
    (status,) = host.ask(GetStatus())
    host.stop()
    return int(status["channels"][0]["setpoint_ua"])


def test_a_remembered_copy_does_not_refresh_its_memory(cunit: Build) -> None:
    with RefUnit(cunit.unit) as unit:
        host = Host(unit)
        host.configure(1_200, seq=1)
        for seq in range(2, 9):
            host.configure(1_000, seq=seq)
        assert types(host.configure(1_200, seq=1)) == ["ACK"]
        assert configured_amplitude(host, 11) == 1_000  # a copy: not carried out
        host.configure(1_000, seq=9)  # the ninth forgets seq 1
        host.configure(1_200, seq=1)
        assert configured_amplitude(host, 12) == 1_200  # forgotten: carried out again


def test_a_new_request_with_a_remembered_seq_becomes_the_newest(cunit: Build) -> None:
    with RefUnit(cunit.unit) as unit:
        host = Host(unit)
        for seq in range(1, 9):
            host.configure(1_000, seq=seq)
        host.configure(1_100, seq=1)  # same seq, other bytes: carried out, the newest
        host.configure(1_000, seq=9)  # forgets seq 2
        host.configure(1_200, seq=20)  # forgets seq 3
        host.configure(1_100, seq=1)  # still remembered: not carried out
        assert configured_amplitude(host, 11) == 1_200
        host.configure(1_000, seq=2)  # forgotten: carried out again
        assert configured_amplitude(host, 12) == 1_000


def test_the_clock_starts_at_clock_start_ms_and_wraps_at_2_32(cunit: Build) -> None:
    begin = 2**32 - 2_000
    with RefUnit(cunit.unit, f"clock_start_ms={begin}") as unit:
        host = Host(unit)
        (status,) = host.ask(GetStatus())
        assert begin <= status["time_ms"] < 2**32  # it started there (not yet wrapped)
        host.configure()
        started = host.start(0x5E58)[1]
        assert started["time_ms"] >= begin
        end = time.monotonic() + 10
        while status["time_ms"] >= begin:  # read the unit's clock until it wraps
            assert time.monotonic() < end, status
            (status,) = [f for f in host.ask(GetStatus()) if f["type"] == "STATUS"]
            host.ask(Heartbeat(session_id=0x5E58))
        stopped = next(f for f in host.stop() if f["type"] == "STOPPED")
        assert stopped["time_ms"] < 10_000  # after the wrap
        assert (
            abs(stopped["delivered_ms"] - ((stopped["time_ms"] - started["time_ms"]) % 2**32)) <= 1
        )


def test_an_electrode_open_from_power_up_refuses_start(cunit: Build) -> None:
    with RefUnit(cunit.unit, "open_channel=2") as unit:
        host = Host(unit)
        host.configure()
        host.configure(seq=40, channel=2)
        (nack,) = host.start(77, channel_mask=3)
        assert (nack["error"], nack["field"], nack["channel"]) == ("LEAD_OFF", "CHANNEL", 2)
        assert types(host.start(78, channel_mask=1)) == ["ACK", "OUTPUT_STARTED"]
        host.stop()
