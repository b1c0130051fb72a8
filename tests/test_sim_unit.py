"""The simulated unit enforces SAFETY.md by itself, whatever the host does.

Each test drives the sans-I/O unit directly on a manual clock (tests/harness.py),
so every time below is exact.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from estim.protocol import (
    Ack,
    AmplitudeReached,
    BootCause,
    Booted,
    Button,
    ButtonPressed,
    ClearFault,
    Completed,
    ErrorCode,
    Fault,
    FaultRaised,
    Field,
    GetStatus,
    Heartbeat,
    Hello,
    Message,
    Nack,
    OutputStarted,
    RampDone,
    RampDownStarted,
    SetAmplitude,
    State,
    Status,
    Stop,
    Stopped,
    StopReason,
    build_frame,
    cobs_encode,
    encode,
)
from estim.sim import OPEN_CIRCUIT_OHM, UnitConfig

from .harness import Harness, configure, start

SID = 0x5E55


def delivered_s(h: Harness) -> float:
    """Output-on to output-off, from the unit's own log."""
    on = h.unit.events("output_on")[-1].t
    off = h.unit.events("output_off")[-1].t
    return off - on


# --- 1. dwell ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dwell_ms", "accepted"),
    [
        (59_999, False),
        (60_000, True),
        (600_000, True),
        (600_001, False),
        (59_000, False),
        (601_000, False),
        (0, False),
    ],
)
def test_unit_refuses_dwell_outside_60_to_600_s(dwell_ms: int, accepted: bool) -> None:
    h = Harness()
    h.ok(configure())
    answer = h.request(start(dwell_ms=dwell_ms))
    if accepted:
        assert isinstance(answer, Ack)
        assert h.unit.state == State.RAMPING_UP
    else:
        assert isinstance(answer, Nack)
        assert (answer.error, answer.field) == (ErrorCode.OUT_OF_RANGE, Field.DWELL)
        assert h.unit.state == State.IDLE
        assert not h.unit.output_on
        assert h.unit.events("output_on") == []


def test_600_s_session_with_a_silent_host_ends_at_exactly_600_s() -> None:
    h = Harness()
    t0 = h.now
    h.start_session(dwell_ms=600_000, ramp_ms=5_000)
    h.advance(599.999, heartbeat=0.1, session_id=SID)  # the host says nothing but heartbeats
    assert h.unit.output_ua(1) > 0
    h.advance(0.001, heartbeat=0.1, session_id=SID)
    assert h.now == pytest.approx(t0 + 600.0, abs=1e-9)
    assert h.unit.output_ua(1) == 0
    assert h.unit.state == State.IDLE
    (done,) = h.events_of(Completed)
    assert done.delivered_ms == 600_000
    assert delivered_s(h) == pytest.approx(600.0, abs=1e-9)
    assert h.unit.events("output_off")[-1].t == pytest.approx(t0 + 600.0, abs=1e-9)
    # the unit never delivered anything after its deadline
    h.advance(5.0, heartbeat=0.1)
    assert h.unit.output_ua(1) == 0


def test_output_is_zero_at_the_deadline_even_without_a_poll_then() -> None:
    h = Harness()
    h.start_session(dwell_ms=60_000, ramp_ms=5_000)
    deadline = h.unit.events("output_on")[-1].t + 60.0
    assert h.unit.output_ua(1, t=deadline - 0.000001) >= 0
    assert h.unit.output_ua(1, t=deadline) == 0
    assert h.unit.output_ua(1, t=deadline + 1) == 0


# --- 2. watchdog ----------------------------------------------------------------


def test_watchdog_turns_output_off_within_its_period_and_latches() -> None:
    h = Harness()
    h.start_session(watchdog_ms=500)
    h.advance(10.0, heartbeat=0.1, session_id=SID)
    last_frame = h.now
    assert h.unit.output_on
    h.advance(0.499)  # silence
    assert h.unit.output_on
    h.advance(0.001)
    assert not h.unit.output_on
    assert h.unit.state == State.FAULT
    assert h.unit.faults == {Fault.WATCHDOG}
    assert h.unit.events("output_off")[-1].t - last_frame == pytest.approx(0.5, abs=1e-9)
    fault, stopped = h.events[-2:]
    assert isinstance(fault, FaultRaised)
    assert fault.fault == Fault.WATCHDOG
    assert isinstance(stopped, Stopped)
    assert stopped.reason == StopReason.FAULT
    # latched: nothing new is configured, and the host's heartbeat is told so
    assert h.refused(configure()).error == ErrorCode.FAULT_LATCHED
    assert h.refused(Heartbeat(session_id=SID)).error == ErrorCode.FAULT_LATCHED


def test_watchdog_fault_stays_latched_until_clear_fault() -> None:
    h = Harness()
    h.start_session(watchdog_ms=200)
    h.advance(1.0)
    assert h.unit.state == State.FAULT
    assert h.refused(start(session_id=2)).error == ErrorCode.FAULT_LATCHED
    assert h.refused(configure()).error == ErrorCode.FAULT_LATCHED
    assert h.refused(Heartbeat(session_id=SID)).error == ErrorCode.FAULT_LATCHED
    h.advance(60.0)
    assert h.unit.state == State.FAULT
    assert h.ok(ClearFault()).state == State.IDLE
    assert h.unit.faults == set()
    h.ok(start(session_id=2, watchdog_ms=200))
    assert h.unit.state == State.RAMPING_UP


@pytest.mark.parametrize(
    ("watchdog_ms", "accepted"), [(199, False), (200, True), (2000, True), (2001, False)]
)
def test_watchdog_range(watchdog_ms: int, accepted: bool) -> None:
    h = Harness()
    h.ok(configure())
    answer = h.request(start(watchdog_ms=watchdog_ms))
    assert isinstance(answer, Ack) == accepted
    if not accepted:
        assert isinstance(answer, Nack)
        assert answer.field == Field.WATCHDOG


def test_a_corrupted_frame_does_not_feed_the_watchdog() -> None:
    h = Harness()
    h.start_session(watchdog_ms=500)
    beat = bytearray(encode(Heartbeat(seq=900, session_id=SID)))
    beat[4] ^= 0x40
    for _ in range(9):
        h.advance(0.1)
        h.send_raw(bytes(beat))
    assert h.unit.state == State.FAULT
    assert Fault.WATCHDOG in h.unit.faults


def test_watchdog_is_not_armed_when_idle() -> None:
    h = Harness()
    h.advance(3600)
    assert h.unit.state == State.IDLE
    assert h.unit.faults == set()


# --- 3. output limits and slew ------------------------------------------------------


def test_start_ramp_is_linear_and_takes_exactly_the_ramp() -> None:
    h = Harness()
    h.start_session(ramp_ms=4_000, channels={1: 12_000})
    t0 = h.unit.events("output_on")[-1].t
    for i in range(41):
        t = t0 + i * 0.1
        assert h.unit.output_ua(1, t=t) == 12_000 * i // 40
    h.advance(4.0, heartbeat=0.1, session_id=SID)
    (done,) = h.events_of(RampDone)
    assert done.time_ms * 1000 == pytest.approx((t0 + 4.0 - 100.0) * 1_000_000, abs=1000)
    assert h.unit.state == State.RUNNING


def test_end_ramp_reaches_zero_exactly_at_the_deadline() -> None:
    h = Harness()
    h.start_session(dwell_ms=60_000, ramp_ms=5_000)
    t0 = h.unit.events("output_on")[-1].t
    h.advance(54.9, heartbeat=0.1, session_id=SID)
    assert h.unit.state == State.RUNNING
    h.advance(0.2, heartbeat=0.1, session_id=SID)
    assert h.unit.state == State.RAMPING_DOWN
    (down,) = h.events_of(RampDownStarted)
    assert down.remaining_ms == 5_000
    for ms in range(0, 5001, 250):
        assert h.unit.output_ua(1, t=t0 + 55 + ms / 1000) == 12_000 * (5000 - ms) // 5000
    h.advance(5.0, heartbeat=0.1, session_id=SID)
    assert h.events_of(Completed)[0].delivered_ms == 60_000


def test_a_ramp_faster_than_the_unit_can_slew_is_refused() -> None:
    # 12 mA at 10 mA/s needs at least 1.2 s
    h = Harness()
    h.ok(configure(amplitude_ua=12_000))
    answer = h.refused(start(ramp_ms=1_199))
    assert (answer.error, answer.field, answer.channel) == (ErrorCode.OUT_OF_RANGE, Field.RAMP, 1)
    h.ok(start(ramp_ms=1_200))


def test_a_jump_is_impossible_ramp_zero_is_refused() -> None:
    h = Harness()
    h.ok(configure(amplitude_ua=100))
    assert h.refused(start(ramp_ms=0)).field == Field.RAMP


def test_ramp_longer_than_half_the_dwell_is_refused() -> None:
    h = Harness()
    h.ok(configure())
    assert h.refused(start(dwell_ms=60_000, ramp_ms=30_001)).field == Field.RAMP
    h.ok(start(dwell_ms=60_000, ramp_ms=30_000))


def test_set_amplitude_slews_at_the_session_rate_and_reports() -> None:
    h = Harness()
    h.start_session(ramp_ms=5_000, channels={1: 10_000})  # 2 mA/s
    h.advance(10.0, heartbeat=0.1, session_id=SID)
    t = h.now
    h.ok(SetAmplitude(session_id=SID, channel=1, amplitude_ua=12_000))
    assert h.unit.output_ua(1) == 10_000
    assert h.unit.output_ua(1, t=t + 0.5) == 11_000
    h.advance(1.0, heartbeat=0.1, session_id=SID)
    assert h.unit.output_ua(1) == 12_000
    (reached,) = h.events_of(AmplitudeReached)
    assert (reached.channel, reached.amplitude_ua) == (1, 12_000)


def test_raising_the_amplitude_lengthens_the_end_ramp_but_output_still_ends_at_the_deadline() -> (
    None
):
    h = Harness()
    h.start_session(dwell_ms=60_000, ramp_ms=5_000, channels={1: 10_000})
    h.advance(10.0, heartbeat=0.1, session_id=SID)
    h.ok(SetAmplitude(session_id=SID, channel=1, amplitude_ua=20_000))
    h.advance(49.9, heartbeat=0.1, session_id=SID)
    # the end ramp of 20 mA at 2 mA/s began 10 s before the deadline
    assert h.events_of(RampDownStarted)[0].remaining_ms == 10_000
    h.advance(0.2, heartbeat=0.1, session_id=SID)
    assert h.unit.output_ua(1) == 0
    assert h.events_of(Completed)[0].delivered_ms == 60_000


def test_set_amplitude_refusals() -> None:
    h = Harness()
    assert (
        h.refused(SetAmplitude(session_id=SID, channel=1, amplitude_ua=100)).error
        == ErrorCode.NO_SESSION
    )
    h.start_session(channels={1: 12_000})
    assert (
        h.refused(SetAmplitude(session_id=SID + 1, channel=1, amplitude_ua=100)).error
        == ErrorCode.NO_SESSION
    )
    assert (
        h.refused(SetAmplitude(session_id=SID, channel=2, amplitude_ua=100)).field == Field.CHANNEL
    )
    assert (
        h.refused(SetAmplitude(session_id=SID, channel=1, amplitude_ua=50_100)).field
        == Field.AMPLITUDE
    )
    assert (
        h.refused(SetAmplitude(session_id=SID, channel=1, amplitude_ua=12_050)).field
        == Field.AMPLITUDE
    )
    h.advance(597.0, heartbeat=0.1, session_id=SID)
    assert h.unit.state == State.RAMPING_DOWN
    assert (
        h.refused(SetAmplitude(session_id=SID, channel=1, amplitude_ua=100)).error
        == ErrorCode.BAD_STATE
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"channel": 0}, Field.CHANNEL),
        ({"channel": 3}, Field.CHANNEL),
        ({"frequency_dhz": 9}, Field.FREQUENCY),
        ({"frequency_dhz": 1501}, Field.FREQUENCY),
        ({"pulse_width_us": 49}, Field.PULSE_WIDTH),
        ({"pulse_width_us": 501}, Field.PULSE_WIDTH),
        ({"amplitude_ua": 0}, Field.AMPLITUDE),
        ({"amplitude_ua": 50_100}, Field.AMPLITUDE),
        ({"amplitude_ua": 12_050}, Field.AMPLITUDE),
        ({"alt_frequency_dhz": 20}, Field.ALT_FREQUENCY),
        ({"switch_ms": 3000}, Field.SWITCH_PERIOD),
    ],
)
def test_configure_refuses_everything_outside_the_reported_limits(
    changes: dict[str, int], field: Field
) -> None:
    h = Harness()
    answer = h.refused(configure(**changes))
    assert (answer.error, answer.field) == (ErrorCode.OUT_OF_RANGE, field)


@pytest.mark.parametrize(
    "changes",
    [
        {"frequency_dhz": 10},
        {"frequency_dhz": 1500},
        {"pulse_width_us": 50},
        {"pulse_width_us": 500},
        {"amplitude_ua": 100},
        {"amplitude_ua": 50_000},
    ],
)
def test_configure_accepts_the_limits_themselves(changes: dict[str, int]) -> None:
    Harness().ok(configure(**changes))


def test_modes_dense_disperse_and_burst() -> None:
    from estim.protocol import Mode

    h = Harness()
    h.ok(
        configure(
            mode=Mode.DENSE_DISPERSE, frequency_dhz=20, alt_frequency_dhz=1000, switch_ms=3000
        )
    )
    assert (
        h.refused(configure(mode=Mode.DENSE_DISPERSE, alt_frequency_dhz=20, switch_ms=3000)).field
        == Field.ALT_FREQUENCY
    )
    assert (
        h.refused(configure(mode=Mode.DENSE_DISPERSE, alt_frequency_dhz=1000, switch_ms=99)).field
        == Field.SWITCH_PERIOD
    )
    h.ok(configure(mode=Mode.BURST, frequency_dhz=1000, alt_frequency_dhz=20, switch_ms=70))
    assert (
        h.refused(
            configure(mode=Mode.BURST, frequency_dhz=1000, alt_frequency_dhz=20, switch_ms=500)
        ).field
        == Field.SWITCH_PERIOD
    )
    assert (
        h.refused(
            configure(mode=Mode.BURST, frequency_dhz=20, alt_frequency_dhz=20, switch_ms=70)
        ).field
        == Field.ALT_FREQUENCY
    )


def test_unsupported_waveform_is_refused() -> None:
    from estim.protocol import Waveform

    h = Harness(UnitConfig(waveforms=0b011))
    assert h.refused(configure(waveform=Waveform.MONOPHASIC)).field == Field.WAVEFORM


def test_start_needs_every_channel_configured() -> None:
    h = Harness()
    h.ok(configure(1))
    answer = h.refused(start(channel_mask=0b11))
    assert (answer.error, answer.channel) == (ErrorCode.NOT_CONFIGURED, 2)
    assert h.refused(start(channel_mask=0b100)).field == Field.CHANNEL_MASK
    assert h.refused(start(channel_mask=0)).field == Field.CHANNEL_MASK
    assert h.refused(start(session_id=0)).field == Field.SESSION_ID


def test_nothing_but_heartbeats_and_status_changes_while_running() -> None:
    h = Harness()
    h.start_session()
    assert h.refused(configure()).error == ErrorCode.BAD_STATE
    assert h.refused(start(session_id=99)).error == ErrorCode.BAD_STATE
    assert isinstance(
        h.request(Hello(min_version=1, max_version=1)), type(UnitConfig().device_info())
    )
    assert h.unit.state == State.RAMPING_UP


# --- 4. safe state, faults ---------------------------------------------------------


def test_stop_is_immediate_and_idempotent() -> None:
    h = Harness()
    h.start_session()
    h.advance(30.0, heartbeat=0.1, session_id=SID)
    assert h.unit.output_ua(1) == 12_000
    t = h.now
    assert h.ok(Stop(reason=StopReason.OPERATOR)).state == State.IDLE
    assert h.unit.output_ua(1) == 0
    assert h.unit.events("output_off")[-1].t == t
    (stopped,) = h.events_of(Stopped)
    assert (stopped.reason, stopped.delivered_ms) == (StopReason.OPERATOR, 30_000)
    assert h.ok(Stop(reason=StopReason.OPERATOR)).state == State.IDLE  # again: no effect
    assert len(h.events_of(Stopped)) == 1


def test_stop_with_an_unknown_reason_still_stops() -> None:
    h = Harness()
    h.start_session()
    h.ok(Stop(reason=200))
    assert not h.unit.output_on
    assert h.events_of(Stopped)[0].reason == 200


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(
    "frame",
    [
        build_frame(kind=1, seq=4000, msg_type=0x06, payload=b""),  # no reason byte
        build_frame(kind=1, seq=4000, msg_type=0x06, payload=b"\x01\x02"),  # one too many
        build_frame(kind=1, seq=4000, msg_type=0x06, payload=b"\x01", version=2),
        build_frame(kind=1, seq=4000, msg_type=0x06, payload=b"\x01", flags=1),
        # the header's length says 2, the payload is 1 byte (the CRC is still good)
        _with_crc(
            build_frame(kind=1, seq=4000, msg_type=0x06, payload=b"\x01")[:6] + b"\x02\x00\x01"
        ),
    ],
    ids=["no payload", "long payload", "version 2", "flags 1", "length field 2"],
)
def test_a_malformed_stop_with_a_good_crc_stops_is_acked_and_reports_reason_0(
    frame: bytes,
) -> None:
    """PROTOCOL.md 3.4: a STOP is never lost to a format error; a NACK would say
    "no effect", so it is ACKed; its reason cannot be read, so STOPPED says 0."""
    h = Harness()
    h.start_session()
    h.advance(2.0, heartbeat=0.1, session_id=SID)
    assert h.unit.output_on
    answers = h.send_raw(cobs_encode(frame) + b"\x00")
    assert not h.unit.output_on
    assert h.unit.state == State.IDLE
    ack, stopped = answers
    assert isinstance(ack, Ack)
    assert (ack.seq, ack.request_type, ack.state) == (4000, 0x06, State.IDLE)
    assert isinstance(stopped, Stopped)
    assert stopped.reason == StopReason.UNSPECIFIED == 0
    # in IDLE it is ACKed too, and nothing else happens
    assert [type(m) for m in h.send_raw(cobs_encode(frame) + b"\x00")] == [Ack]


def test_bad_frames_with_a_good_crc_are_nacked_and_bad_crcs_are_dropped() -> None:
    h = Harness()
    unknown = build_frame(kind=1, seq=77, msg_type=0x20, payload=b"")
    (nack,) = h.send_raw(cobs_encode(unknown) + b"\x00")
    assert isinstance(nack, Nack)
    assert (nack.seq, nack.error, nack.request_type) == (77, ErrorCode.UNKNOWN_TYPE, 0x20)
    flagged = build_frame(kind=1, seq=78, msg_type=0x05, payload=bytes(4), flags=1)
    (nack,) = h.send_raw(cobs_encode(flagged) + b"\x00")
    assert isinstance(nack, Nack)
    assert nack.error == ErrorCode.BAD_FLAGS
    corrupt = bytearray(encode(Heartbeat(seq=79, session_id=0)))
    corrupt[3] ^= 1
    assert h.send_raw(bytes(corrupt)) == []
    # a response-kind frame sent to the unit is not a request: ignored
    assert h.send_raw(encode(Ack(seq=80, request_type=5, state=State.IDLE))) == []


def test_lead_off_turns_that_channel_and_all_others_off_and_latches() -> None:
    h = Harness()
    h.start_session(channels={1: 12_000, 2: 8_000})
    h.advance(20.0, heartbeat=0.1, session_id=SID)
    assert h.unit.outputs() == [12_000, 8_000]
    h.unit.pull_electrode(2)
    h._collect()
    assert h.unit.outputs() == [0, 0]
    assert h.unit.state == State.FAULT
    assert h.unit.faults == {Fault.LEAD_OFF}
    fault = h.events_of(FaultRaised)[0]
    assert (fault.fault, fault.channel) == (Fault.LEAD_OFF, 2)
    status = h.request(GetStatus())
    assert isinstance(status, Status)
    assert (status.faults, status.fault_channel) == (1 << (Fault.LEAD_OFF - 1), 2)
    # clear the fault: START is refused while the electrode is still open
    h.ok(ClearFault())
    answer = h.refused(start(session_id=9, channel_mask=0b11))
    assert (answer.error, answer.channel) == (ErrorCode.LEAD_OFF, 2)
    h.unit.set_impedance(2, 3_000)
    h.ok(start(session_id=9, channel_mask=0b11))


def test_compliance_limit_is_an_over_current_fault() -> None:
    # 120 V compliance at 10 kOhm is 12 mA: the ramp to 15 mA trips at 12 mA
    h = Harness(UnitConfig(impedance_ohm=10_000))
    h.start_session(channels={1: 15_000}, ramp_ms=5_000)
    t0 = h.unit.events("output_on")[-1].t
    h.advance(5.0, heartbeat=0.1, session_id=SID)
    assert h.unit.faults == {Fault.OVER_CURRENT}
    off = h.unit.events("output_off")[-1].t
    assert off - t0 == pytest.approx(4.0, abs=0.001)  # 12 mA of the 15 mA ramp
    assert not h.unit.output_on


def test_over_current_injection_and_estop() -> None:
    h = Harness()
    h.start_session()
    h.advance(1.0, heartbeat=0.1, session_id=SID)
    h.unit.over_current(1)
    h._collect()
    assert h.unit.faults == {Fault.OVER_CURRENT}
    assert not h.unit.output_on
    h.unit.press(Button.ESTOP)  # a second fault while latched: added, no second STOPPED
    h._collect()
    assert h.unit.faults == {Fault.OVER_CURRENT, Fault.ESTOP}
    assert len(h.events_of(Stopped)) == 1
    assert h.events_of(ButtonPressed)[0].button == Button.ESTOP


def test_estop_while_running() -> None:
    h = Harness()
    h.start_session()
    h.advance(3.0, heartbeat=0.1, session_id=SID)
    h.unit.press(Button.ESTOP)
    h._collect()
    assert not h.unit.output_on
    assert h.unit.state == State.FAULT
    assert [type(e).__name__ for e in h.events[-3:]] == ["ButtonPressed", "FaultRaised", "Stopped"]


def test_mark_button_is_only_an_event() -> None:
    h = Harness()
    h.start_session()
    h.advance(1.0, heartbeat=0.1, session_id=SID)
    h.unit.press(Button.MARK)
    h._collect()
    assert h.unit.output_on
    assert h.events_of(ButtonPressed)[0].button == Button.MARK


def test_reset_is_a_power_cycle_idle_zero_no_resume() -> None:
    h = Harness()
    h.start_session()
    h.advance(5.0, heartbeat=0.1, session_id=SID)
    h.unit.reset()
    h._collect()
    assert h.unit.state == State.IDLE
    assert not h.unit.output_on
    booted = h.events_of(Booted)
    assert booted[-1].cause == BootCause.RESET
    assert booted[-1].seq == 0  # the event counter restarts
    # nothing resumes, configuration is gone
    h.advance(10.0, heartbeat=0.1)
    assert not h.unit.output_on
    assert h.refused(start(session_id=77)).error == ErrorCode.NOT_CONFIGURED


# --- duplicates and replays -----------------------------------------------------------


def test_a_start_copy_is_decided_by_its_session_id_not_by_memory() -> None:
    """PROTOCOL.md 10: a copy of the live session's START is ACKed with the state
    now and has no effect; once the session has ended, the same bytes get
    SESSION_ENDED, however much else happened in between."""
    h = Harness()
    h.ok(configure())
    first = h.request(start(), seq=500)
    assert isinstance(first, Ack)
    assert first.state == State.RAMPING_UP
    h.advance(6.0, heartbeat=0.1, session_id=SID)
    again = h.request(start(), seq=500)  # the same frame, retransmitted
    assert isinstance(again, Ack)
    assert again.state == State.RUNNING
    assert len(h.unit.events("output_on")) == 1
    assert len(h.events_of(OutputStarted)) == 1
    h.ok(Stop(reason=StopReason.OPERATOR))
    late = h.request(start(), seq=500)
    assert isinstance(late, Nack)
    assert (late.error, late.field, late.channel) == (ErrorCode.SESSION_ENDED, Field.SESSION_ID, 0)
    for _ in range(12):  # more requests than the unit remembers: the answer is the same
        h.ok(Heartbeat(session_id=0))
    assert h.request(start(), seq=500) == late
    assert not h.unit.output_on


def test_a_remembered_answer_carries_the_state_now() -> None:
    h = Harness()
    h.start_session()
    change = SetAmplitude(session_id=SID, channel=1, amplitude_ua=10_000)
    first = h.request(change, seq=900)
    assert isinstance(first, Ack)
    assert first.state == State.RAMPING_UP
    h.ok(Stop(reason=StopReason.OPERATOR))
    copy = h.request(change, seq=900)
    assert copy == Ack(seq=900, request_type=0x04, state=State.IDLE)  # not stale, not re-done
    assert len(h.unit.events("setpoint")) == 1


def test_a_configure_copy_is_not_carried_out_again() -> None:
    h = Harness()
    h.request(configure(amplitude_ua=12_000), seq=700)
    h.ok(configure(amplitude_ua=10_000))
    assert isinstance(h.request(configure(amplitude_ua=12_000), seq=700), Ack)
    h.ok(start())
    status = h.request(GetStatus())
    assert isinstance(status, Status)
    assert status.channels[0].setpoint_ua == 10_000


def test_heartbeat_and_status_copies_are_answered_afresh() -> None:
    h = Harness()
    assert h.request(Heartbeat(session_id=0), seq=42) == Ack(
        seq=42, request_type=0x05, state=State.IDLE
    )
    h.start_session()
    assert h.request(Heartbeat(session_id=0), seq=42) == Ack(
        seq=42, request_type=0x05, state=State.RAMPING_UP
    )
    first = h.request(GetStatus(), seq=43)
    h.advance(1.0, heartbeat=0.1, session_id=SID)
    second = h.request(GetStatus(), seq=43)
    assert isinstance(first, Status)
    assert isinstance(second, Status)
    assert second.elapsed_ms == first.elapsed_ms + 1000


def test_a_replayed_start_for_an_ended_session_is_refused() -> None:
    h = Harness()
    h.start_session(session_id=1234)
    h.ok(Stop(reason=StopReason.OPERATOR))
    answer = h.refused(start(session_id=1234))  # new seq: not a duplicate
    assert answer.error == ErrorCode.SESSION_ENDED
    assert not h.unit.output_on


def test_heartbeat_tells_the_host_its_session_is_over() -> None:
    h = Harness()
    h.start_session(dwell_ms=60_000)
    assert h.ok(Heartbeat(session_id=SID)).state == State.RAMPING_UP
    h.advance(60.0, heartbeat=0.1, session_id=SID)
    assert h.refused(Heartbeat(session_id=SID)).error == ErrorCode.NO_SESSION
    assert h.ok(Heartbeat(session_id=0)).state == State.IDLE


def test_events_carry_a_gapless_counter() -> None:
    h = Harness()
    h.start_session(dwell_ms=60_000)
    h.advance(61.0, heartbeat=0.1, session_id=SID)
    seqs = [e.seq for e in h.events]
    assert seqs == list(range(len(seqs)))
    assert [type(e).__name__ for e in h.events] == [
        "Booted",
        "OutputStarted",
        "RampDone",
        "RampDownStarted",
        "Completed",
    ]
    assert h.events_of(OutputStarted)[0].dwell_ms == 60_000


def test_hello_version_negotiation() -> None:
    h = Harness()
    assert h.refused(Hello(min_version=2, max_version=3)).error == ErrorCode.UNSUPPORTED_VERSION
    assert h.refused(Hello(min_version=2, max_version=1)).error == ErrorCode.OUT_OF_RANGE
    assert h.request(Hello(min_version=1, max_version=9)) == UnitConfig().device_info(seq=h.seq - 1)


def test_status_reports_the_session() -> None:
    h = Harness()
    h.start_session(channels={1: 12_000}, dwell_ms=120_000)
    h.advance(30.0, heartbeat=0.1, session_id=SID)
    status = h.request(GetStatus())
    assert isinstance(status, Status)
    assert (status.state, status.session_id, status.elapsed_ms, status.remaining_ms) == (
        State.RUNNING,
        SID,
        30_000,
        90_000,
    )
    assert status.channels[0].amplitude_ua == 12_000
    assert status.channels[0].impedance_ohm == 2_000
    assert status.channels[1].amplitude_ua == 0


def test_scripted_faults_in_every_session() -> None:
    h = Harness()
    h.unit.inject_in_session(5.0, "lead_off", 1)
    h.start_session()
    h.advance(4.9, heartbeat=0.1, session_id=SID)
    assert h.unit.output_on
    h.advance(0.2, heartbeat=0.1, session_id=SID)
    assert h.unit.faults == {Fault.LEAD_OFF}
    assert h.unit.events("output_off")[-1].t - h.unit.events("output_on")[-1].t == pytest.approx(
        5.0, abs=1e-9
    )


def test_unknown_scripted_action_is_refused() -> None:
    h = Harness()
    with pytest.raises(ValueError, match="unknown action"):
        h.unit.inject_at(1.0, "explode")
    with pytest.raises(ValueError, match="channel 9"):
        h.unit.inject_at(1.0, "lead_off", 9)


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="channels=9"):
        UnitConfig(channels=9)
    with pytest.raises(ValueError, match="1%"):
        UnitConfig(amplitude_step_ua=1000)
    with pytest.raises(ValueError, match="dwell_min_ms"):
        UnitConfig(dwell_min_ms=700_000)


def test_open_circuit_constant_is_above_every_lead_off_threshold() -> None:
    assert UnitConfig().lead_off_ohm < OPEN_CIRCUIT_OHM


def test_a_stop_identical_to_a_remembered_one_still_stops() -> None:
    # A second host (after a crash) may reuse a sequence number: its STOP must
    # never be taken for a retransmission of an old one and answered without effect.
    h = Harness()
    h.start_session(session_id=1)
    first = h.request(Stop(reason=StopReason.OPERATOR), seq=40)
    h.start_session(session_id=2, watchdog_ms=2000)
    h.advance(1.0)  # no other request meanwhile: seq 40 is still remembered
    assert h.unit.output_on
    again = h.request(Stop(reason=StopReason.OPERATOR), seq=40)
    assert not h.unit.output_on
    assert isinstance(again, Ack)
    assert isinstance(first, Ack)


def test_the_log_reports_the_worst_gap_between_frames_during_output() -> None:
    h = Harness()
    h.start_session(dwell_ms=60_000)
    h.advance(5.0, heartbeat=0.1, session_id=SID)
    h.advance(0.3)  # a 400 ms silence, under the watchdog
    h.advance(54.7, heartbeat=0.1, session_id=SID)
    off = h.unit.events("output_off")[-1]
    assert off.data["max_frame_gap_ms"] == pytest.approx(400.0)


@pytest.mark.parametrize(
    "request_",
    [
        GetStatus(),
        Hello(min_version=1, max_version=1),
        Heartbeat(session_id=0),
        Heartbeat(session_id=SID + 1),
        configure(),
        SetAmplitude(session_id=SID, channel=1, amplitude_ua=12_000),
        SetAmplitude(session_id=SID, channel=1, amplitude_ua=12_050),
        ClearFault(),
    ],
    ids=[
        "GET_STATUS",
        "HELLO",
        "HEARTBEAT 0",
        "HEARTBEAT other session",
        "CONFIGURE (refused)",
        "SET_AMPLITUDE (accepted)",
        "SET_AMPLITUDE (refused)",
        "CLEAR_FAULT",
    ],
)
def test_only_a_heartbeat_of_the_live_session_feeds_the_watchdog(request_: Message) -> None:
    """PROTOCOL.md 9.1: a second program that polls, a user-interface thread still
    changing amplitude while the session loop is hung, a stream of refused
    requests: none of them may keep an output alive."""
    h = Harness()
    h.start_session(watchdog_ms=500)
    h.advance(5.0, heartbeat=0.1, session_id=SID)
    last_beat = h.now
    for _ in range(20):
        h.advance(0.1)
        h.request(request_)
    assert not h.unit.output_on
    assert [e.data["fault"] for e in h.unit.events("fault")] == ["WATCHDOG"]
    assert h.unit.events("output_off")[-1].t - last_beat == pytest.approx(0.5)


def test_heartbeats_of_the_live_session_keep_it_alive_for_the_whole_dwell() -> None:
    h = Harness()
    h.start_session(watchdog_ms=500, dwell_ms=60_000)
    h.advance(0.45)  # START armed the watchdog: 450 ms without a heartbeat is fine
    assert h.unit.output_on
    h.ok(Heartbeat(session_id=SID))
    h.advance(60.0, heartbeat=0.45, session_id=SID)
    assert h.unit.faults == set()
    assert len(h.events_of(Completed)) == 1
