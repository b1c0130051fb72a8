"""The rules PROTOCOL.md 1.3 states where 1.2 was silent or ambiguous (the "Spec
questions met" of firmware_protocol/reference/README.md, numbered as there), each
checked on the simulated unit driven directly, sans I/O, on a manual clock.
"""

from __future__ import annotations

from estim.protocol import (
    Ack,
    AmplitudeReached,
    Button,
    ButtonPressed,
    ClearFault,
    ErrorCode,
    Fault,
    FaultRaised,
    Field,
    GetStatus,
    Heartbeat,
    Hello,
    Nack,
    RampDone,
    SetAmplitude,
    State,
    Status,
    Stop,
    StopReason,
    build_frame,
    cobs_encode,
    encode,
)
from estim.sim import OPEN_CIRCUIT_OHM

from .harness import Harness, configure, start

SID = 0x5E55


# --- Q2: 10 vs 6.1, a START naming an ended session while not IDLE ------------------


def test_q2_state_checks_come_before_session_ended() -> None:
    h = Harness()
    h.start_session(session_id=SID)
    h.ok(Stop(reason=StopReason.OPERATOR))
    h.ok(start(session_id=SID + 1))
    nack = h.refused(start(session_id=SID))  # ended, while SID + 1 is live
    assert (nack.error, nack.field, nack.channel) == (ErrorCode.BAD_STATE, Field.NONE, 0)
    h.unit.internal_fault()
    nack = h.refused(start(session_id=SID))  # ended, while a fault is latched
    assert (nack.error, nack.field, nack.state) == (
        ErrorCode.FAULT_LATCHED,
        Field.NONE,
        State.FAULT,
    )
    h.ok(ClearFault())
    nack = h.refused(start(session_id=SID))
    assert (nack.error, nack.field, nack.channel) == (ErrorCode.SESSION_ENDED, Field.SESSION_ID, 0)


# --- Q5: remembered answers are replayed as remembered -----------------------------


def test_q5_a_remembered_refusal_is_replayed_after_the_state_changed() -> None:
    h = Harness()
    h.start_session(session_id=SID)
    refused = h.request(configure(2, 10_000), seq=500)
    assert isinstance(refused, Nack)
    assert refused.error == ErrorCode.BAD_STATE
    h.ok(Stop(reason=StopReason.OPERATOR))
    copy = h.request(configure(2, 10_000), seq=500)
    assert copy == Nack(
        seq=500,
        request_type=0x02,
        error=ErrorCode.BAD_STATE,
        field=Field.NONE,
        channel=0,
        state=State.IDLE,
    )
    assert 2 not in h.unit._configs  # not carried out


def test_q5_a_remembered_clear_fault_clears_nothing_later() -> None:
    h = Harness()
    h.unit.internal_fault()
    assert h.request(ClearFault(), seq=600) == Ack(seq=600, request_type=0x08, state=State.IDLE)
    h.unit.internal_fault()
    copy = h.request(ClearFault(), seq=600)
    assert copy == Ack(seq=600, request_type=0x08, state=State.FAULT)
    assert h.unit.state == State.FAULT


def test_q5_other_types_neither_read_nor_replace_the_memory() -> None:
    h = Harness()
    first = h.request(configure(1, 12_000), seq=700)
    assert isinstance(first, Ack)
    h.ok(configure(1, 10_000))
    # a HELLO, a HEARTBEAT and a GET_STATUS with the remembered seq: answered afresh
    assert h.request(Hello(min_version=1, max_version=1), seq=700).TYPE == 0x42
    assert isinstance(h.request(Heartbeat(session_id=0), seq=700), Ack)
    assert isinstance(h.request(GetStatus(), seq=700), Status)
    # ... and the CONFIGURE_CHANNEL memory of seq 700 is still there: not carried out
    assert isinstance(h.request(configure(1, 12_000), seq=700), Ack)
    assert h.unit._configs[1].amplitude_ua == 10_000


def test_q5_a_frame_rejected_by_3_4_is_not_remembered() -> None:
    h = Harness()
    good = encode(configure(1, 10_000, seq=800))
    # the same seq and type, one payload byte short (CRC good): BAD_PAYLOAD, no effect
    short = build_frame(kind=1, seq=800, msg_type=0x02, payload=bytes(14))
    (nack,) = h.send_raw(cobs_encode(short) + b"\x00")
    assert isinstance(nack, Nack)
    assert nack.error == ErrorCode.BAD_PAYLOAD
    (ack,) = h.send_raw(good)  # a new request, carried out
    assert isinstance(ack, Ack)
    assert h.unit._configs[1].amplitude_ua == 10_000


# --- Q6 and Q16: session_id and channel of FAULT and BUTTON_PRESSED ---------------------


def test_q6_events_without_a_live_session_carry_session_0() -> None:
    h = Harness()
    h.start_session(session_id=SID)
    h.ok(Stop(reason=StopReason.OPERATOR))
    h.events.clear()
    h.unit.press(Button.MARK)
    h.unit.press(Button.ESTOP)  # in IDLE
    h.unit.internal_fault()  # a second fault while latched
    h.send_raw(b"")
    got = [(type(e).__name__, e.session_id) for e in h.events]
    assert got == [
        ("ButtonPressed", 0),
        ("ButtonPressed", 0),
        ("FaultRaised", 0),
        ("FaultRaised", 0),
    ]


def test_q6_an_estop_while_running_names_the_live_session() -> None:
    h = Harness()
    h.start_session(session_id=SID)
    h.events.clear()
    h.unit.press(Button.ESTOP)
    h.send_raw(b"")
    (button,) = h.events_of(ButtonPressed)
    (fault,) = h.events_of(FaultRaised)
    assert button.session_id == fault.session_id == SID


def test_q16_fault_channel_is_0_for_watchdog_estop_and_internal() -> None:
    h = Harness()
    h.start_session(session_id=SID)
    h.advance(1.0)  # no HEARTBEAT: the watchdog
    h.unit.press(Button.ESTOP)
    h.unit.internal_fault()
    h.send_raw(b"")
    faults = [(Fault(e.fault), e.channel) for e in h.events_of(FaultRaised)]
    assert faults == [(Fault.WATCHDOG, 0), (Fault.ESTOP, 0), (Fault.INTERNAL, 0)]
    status = h.request(GetStatus())
    assert isinstance(status, Status)
    assert status.fault_channel == 0


# --- Q7: over-current in any state; lead-off only while output is on ---------------------


def test_q7_over_current_latches_in_idle_without_stopped() -> None:
    h = Harness()
    h.unit.over_current(2)
    h.send_raw(b"")
    (fault,) = h.events_of(FaultRaised)
    assert (fault.fault, fault.channel, fault.session_id) == (Fault.OVER_CURRENT, 2, 0)
    assert [type(e).__name__ for e in h.events[1:]] == ["FaultRaised"]  # no STOPPED
    assert h.unit.state == State.FAULT


def test_q7_an_open_electrode_in_idle_is_no_fault_but_start_refuses_it() -> None:
    h = Harness()
    h.ok(configure())
    h.unit.set_impedance(1, OPEN_CIRCUIT_OHM)
    h.send_raw(b"")
    assert h.events_of(FaultRaised) == []
    assert h.unit.state == State.IDLE
    nack = h.refused(start())
    assert (nack.error, nack.channel) == (ErrorCode.LEAD_OFF, 1)


# --- Q9: the watchdog boundary, and the watchdog against the deadline --------------------


def test_q9_the_watchdog_trips_at_exactly_watchdog_ms() -> None:
    h = Harness()
    h.start_session(session_id=SID)  # watchdog 500 ms
    h.clock.advance(0.499_999)
    h.unit.poll()
    assert h.unit.state == State.RAMPING_UP
    h.clock.advance(0.000_001)
    answer = h.request(Heartbeat(session_id=SID))  # arrives at exactly 500 ms: too late
    assert isinstance(answer, Nack)
    assert h.unit.state == State.FAULT
    assert h.unit.events("fault")[0].t == h.now


def test_q9_a_watchdog_expiring_at_the_deadline_loses_to_it() -> None:
    h = Harness()
    h.ok(configure())
    h.ok(start(session_id=SID, dwell_ms=60_000, ramp_ms=5_000, watchdog_ms=500))
    h.advance(59.5, heartbeat=0.1, session_id=SID)  # last HEARTBEAT at exactly 59.5 s
    h.clock.advance(5.0)  # polled late: both passed; the deadline came first (a tie)
    h.unit.poll()
    h._collect()
    assert h.unit.state == State.IDLE
    assert h.events_of(FaultRaised) == []


# --- Q10 and the gap boundary: a 50 ms silence ends a discarded over-long frame too ------


def test_gap_drops_a_partial_frame_at_exactly_50_ms() -> None:
    h = Harness(start_at=0.0)
    wire = encode(Heartbeat(seq=1, session_id=0))
    h.send_raw(wire[:5])
    h.clock.advance(0.050)
    assert h.send_raw(wire[5:]) == []  # the rest alone is no frame
    h.clock.advance(0.010)
    assert isinstance(h.send_raw(wire)[0], Ack)


def test_gap_keeps_a_partial_frame_up_to_just_under_50_ms() -> None:
    h = Harness(start_at=0.0)
    wire = encode(Heartbeat(seq=1, session_id=0))
    h.send_raw(wire[:5])
    h.clock.advance(0.049_999)
    assert isinstance(h.send_raw(wire[5:])[0], Ack)


def test_q10_a_gap_ends_the_discarding_of_an_over_long_frame() -> None:
    h = Harness()
    h.send_raw(b"\x01" * 300)  # no 0x00 within 253 bytes: discarding
    h.clock.advance(0.060)
    answer = h.send_raw(encode(Heartbeat(seq=2, session_id=0)))  # no 0x00 in front
    assert [type(m) for m in answer] == [Ack]


# --- Q11: a well-formed response or event sent to a device is dropped ---------------------


def test_q11_responses_and_events_sent_to_a_unit_are_dropped() -> None:
    h = Harness()
    h.start_session(session_id=SID)
    assert h.send_raw(encode(Ack(seq=9, request_type=6, state=State.IDLE))) == []
    event = encode(ButtonPressed(seq=3, session_id=SID, time_ms=0, button=Button.ESTOP))
    assert h.send_raw(event) == []
    assert h.unit.state == State.RAMPING_UP  # no effect at all


# --- Q12: STATUS elapsed_ms and remaining_ms -----------------------------------------------


def test_q12_elapsed_rounds_down_remaining_up_and_both_0_in_fault() -> None:
    h = Harness()
    h.ok(configure())
    h.ok(start(session_id=SID, dwell_ms=60_000, watchdog_ms=2_000))
    h.clock.advance(1.000_4)
    status = h.request(GetStatus())
    assert isinstance(status, Status)
    assert (status.elapsed_ms, status.remaining_ms) == (1_000, 59_000)
    assert status.elapsed_ms + status.remaining_ms == 60_000
    h.unit.internal_fault()
    status = h.request(GetStatus())
    assert isinstance(status, Status)
    assert (status.state, status.elapsed_ms, status.remaining_ms) == (State.FAULT, 0, 0)


# --- Q3: impedance in STATUS for every channel of the live session -------------------------


def test_q3_impedance_is_reported_for_a_live_channel_at_level_0() -> None:
    h = Harness()
    h.start_session(session_id=SID, channels={1: 12_000, 2: 12_000}, channel_mask=3)
    h.ok(SetAmplitude(session_id=SID, channel=2, amplitude_ua=0))
    status = h.request(GetStatus())
    assert isinstance(status, Status)
    assert [c.amplitude_ua for c in status.channels] == [0, 0]  # at START: level 0
    assert [c.impedance_ohm for c in status.channels] == [2_000, 2_000]


# --- Q4: AMPLITUDE_REACHED for a slew of zero length --------------------------------------


def test_q4_a_set_amplitude_to_the_level_now_is_reached_at_once_after_the_ack() -> None:
    h = Harness()
    h.start_session(session_id=SID, channels={1: 12_000, 2: 12_000}, channel_mask=3)
    h.events.clear()
    wire = encode(SetAmplitude(seq=40, session_id=SID, channel=1, amplitude_ua=0))
    got = h.send_raw(wire)  # nothing polled: in the same breath as the ACK
    assert [type(m) for m in got] == [Ack, AmplitudeReached]
    assert (got[1].channel, got[1].amplitude_ua) == (1, 0)
    assert h.events_of(RampDone) == []  # channel 2 still ramping


# --- Q15: the event counter wraps ----------------------------------------------------------


def test_q15_the_event_counter_wraps_to_0() -> None:
    h = Harness()
    h.unit._event_seq = 0xFFFF
    h.unit.press(Button.MARK)
    h.unit.press(Button.MARK)
    h.send_raw(b"")
    assert [e.seq for e in h.events[-2:]] == [0xFFFF, 0]
