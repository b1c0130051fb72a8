"""The rules PROTOCOL.md 1.4 adds or changes, on the simulated unit driven directly,
sans I/O, on a manual clock (tests/cunit/test_spec_1_4.py checks the same rules on
the C reference unit): an ended session never restarts however many sessions
later; a START naming the live session with other fields is refused; the end ramp
starts when the line reaches the level; a copy answered from memory does not
refresh it; the unit's clock may start anywhere and wraps at 2^32.
"""

from __future__ import annotations

import random

import pytest

from estim.protocol import (
    Ack,
    Booted,
    ConfigureChannel,
    ErrorCode,
    Field,
    GetStatus,
    Nack,
    OutputStarted,
    RampDownStarted,
    SetAmplitude,
    State,
    Status,
    Stop,
    Stopped,
    StopReason,
)
from estim.sim import UnitConfig
from estim.sim.options import parse_options
from estim.sim.unit import ENDED_SESSIONS, OPEN_CIRCUIT_OHM

from .harness import Harness, configure, start

STOP = Stop(reason=StopReason.OPERATOR)


def run_and_stop(h: Harness, session_id: int) -> None:
    h.ok(start(session_id=session_id))
    h.ok(STOP)


# --- 10: an ended session never restarts, however many sessions later -------------------


def test_an_ended_start_is_refused_after_three_times_the_list() -> None:
    h = Harness()
    h.ok(configure())
    first = 1_000
    run_and_stop(h, first)
    replays = []
    for n in range(1, 3 * ENDED_SESSIONS + 2):
        run_and_stop(h, first + 10 * n)
        if n in (1, ENDED_SESSIONS - 1, ENDED_SESSIONS, ENDED_SESSIONS + 1, 3 * ENDED_SESSIONS + 1):
            replays.append(h.request(start(session_id=first)))
    assert all(isinstance(r, Nack) and r.error == ErrorCode.SESSION_ENDED for r in replays)
    assert all(isinstance(r, Nack) and r.field == Field.SESSION_ID for r in replays)
    assert len(h.unit.events("output_on")) == 3 * ENDED_SESSIONS + 2  # never a restart


def test_the_floor_refuses_an_unused_id_below_it_and_accepts_one_above() -> None:
    h = Harness()
    h.ok(configure())
    for n in range(ENDED_SESSIONS + 2):  # two ids have left the list: 1000 and 1010
        run_and_stop(h, 1_000 + 10 * n)
    never_ran = h.refused(start(session_id=1_005))  # below the floor 1010
    assert (never_ran.error, never_ran.field, never_ran.channel) == (
        ErrorCode.SESSION_ENDED,
        Field.SESSION_ID,
        0,
    )
    assert h.ok(start(session_id=1_011)).state == State.RAMPING_UP  # above it, never ran


def test_a_random_id_host_is_served_until_the_list_is_full() -> None:
    """1.3's hosts pick ids at random: until E sessions have ended since boot the
    floor is 0 and none of them is refused."""
    h = Harness()
    h.ok(configure())
    rng = random.Random(22)
    for _ in range(ENDED_SESSIONS):
        run_and_stop(h, rng.randrange(1, 2**32))
    assert not [r for r in h.responses if isinstance(r, Nack)]


def test_a_channel_mask_0_start_probes_an_id_without_risk() -> None:
    h = Harness()
    h.ok(configure())
    run_and_stop(h, 7)
    assert h.refused(start(session_id=7, channel_mask=0)).error == ErrorCode.SESSION_ENDED
    free = h.refused(start(session_id=8, channel_mask=0))
    assert (free.error, free.field) == (ErrorCode.OUT_OF_RANGE, Field.CHANNEL_MASK)
    assert len(h.unit.events("output_on")) == 1


# --- 6.1, 10: a START naming the live session with other fields ----------------------------


def test_a_start_naming_the_live_session_with_another_dwell_is_refused() -> None:
    h = Harness()
    h.ok(configure())
    h.ok(start(session_id=0x5E55, dwell_ms=600_000))
    for other in (
        start(session_id=0x5E55, dwell_ms=300_000),
        start(session_id=0x5E55, ramp_ms=6_000),
        start(session_id=0x5E55, watchdog_ms=600),
        start(session_id=0x5E55, channel_mask=3),
    ):
        nack = h.refused(other)
        assert (nack.error, nack.field, nack.channel, nack.state) == (
            ErrorCode.BAD_STATE,
            Field.NONE,
            0,
            State.RAMPING_UP,
        )
    same = h.ok(start(session_id=0x5E55, dwell_ms=600_000))  # a retransmission, new seq
    assert same.state == State.RAMPING_UP
    assert len(h.events_of(OutputStarted)) == 1
    status = h.request(GetStatus())
    assert isinstance(status, Status)
    assert status.remaining_ms == 600_000  # the first START's dwell, untouched


# --- 7, 9.2: model instants ------------------------------------------------------------


def test_the_end_ramp_starts_at_deadline_minus_ramp_with_that_remaining() -> None:
    h = Harness()
    h.start_session(dwell_ms=60_000, ramp_ms=5_000)
    h.advance(60.0, heartbeat=0.1, session_id=0x5E55)
    (began,) = h.events_of(OutputStarted)
    (down,) = h.events_of(RampDownStarted)
    assert (down.time_ms - began.time_ms, down.remaining_ms) == (55_000, 5_000)


def test_a_raised_level_meets_the_end_ramp_later_and_remaining_rounds_up() -> None:
    """12.1 mA at 12 mA / 5 s: the line reaches it 5041.67 ms before the deadline;
    RAMP_DOWN_STARTED says 5042 ms remain (rounded up, as STATUS does)."""
    h = Harness()
    h.start_session(dwell_ms=60_000, ramp_ms=5_000)
    h.advance(10.0, heartbeat=0.1, session_id=0x5E55)
    h.ok(SetAmplitude(session_id=0x5E55, channel=1, amplitude_ua=12_100))
    h.advance(50.0, heartbeat=0.1, session_id=0x5E55)
    (began,) = h.events_of(OutputStarted)
    (down,) = h.events_of(RampDownStarted)
    assert down.remaining_ms == 5_042
    assert down.time_ms - began.time_ms == 54_958
    assert down.time_ms + down.remaining_ms >= began.time_ms + 60_000


# --- 10: a copy answered from memory does not refresh it --------------------------------


def amplitude_of(h: Harness, channel: int = 1) -> int:
    config = h.unit._configs[channel]
    assert isinstance(config, ConfigureChannel)
    return config.amplitude_ua


def test_a_remembered_copy_does_not_refresh_its_memory() -> None:
    h = Harness()
    h.request(configure(amplitude_ua=12_000), seq=1)
    for seq in range(2, 9):  # 8 remembered: seqs 1..8
        h.request(configure(amplitude_ua=10_000), seq=seq)
    assert isinstance(h.request(configure(amplitude_ua=12_000), seq=1), Ack)
    assert amplitude_of(h) == 10_000  # a copy: not carried out, and not refreshed
    h.request(configure(amplitude_ua=10_000), seq=9)  # the ninth forgets seq 1
    assert isinstance(h.request(configure(amplitude_ua=12_000), seq=1), Ack)
    assert amplitude_of(h) == 12_000  # forgotten, so carried out again


def test_a_new_request_with_a_remembered_seq_becomes_the_newest() -> None:
    h = Harness()
    for seq in range(1, 9):
        h.request(configure(amplitude_ua=10_000), seq=seq)
    h.request(configure(amplitude_ua=11_000), seq=1)  # same seq, other bytes: carried out
    assert amplitude_of(h) == 11_000
    h.request(configure(amplitude_ua=10_000), seq=9)  # forgets seq 2, the oldest now
    h.request(configure(amplitude_ua=11_000), seq=1)  # still remembered: not carried out...
    h.request(configure(amplitude_ua=12_000), seq=20)
    h.request(configure(amplitude_ua=11_000), seq=1)
    assert amplitude_of(h) == 12_000  # ...so the copy changed nothing
    h.request(configure(amplitude_ua=10_000), seq=2)  # forgotten: carried out again
    assert amplitude_of(h) == 10_000


# --- the unit's clock may start anywhere (clock_start_ms) ---------------------------------


def test_the_clock_starts_at_clock_start_ms_and_wraps_at_2_32() -> None:
    h = Harness(UnitConfig(clock_start_ms=2**32 - 1_000))
    (booted,) = h.events_of(Booted)
    assert booted.time_ms == 2**32 - 1_000
    h.ok(configure())
    h.advance(0.5)
    h.ok(start(session_id=0x5E55))
    h.advance(1.0, heartbeat=0.1, session_id=0x5E55)
    h.ok(STOP)
    (began,) = h.events_of(OutputStarted)
    (stopped,) = h.events_of(Stopped)
    assert began.time_ms == 2**32 - 500
    assert stopped.time_ms == 500  # wrapped
    assert stopped.delivered_ms == 1_000 == (stopped.time_ms - began.time_ms) & 0xFFFFFFFF
    status = h.request(GetStatus())
    assert isinstance(status, Status)
    assert status.time_ms == 500


@pytest.mark.parametrize(
    "bad", ["clock_start_ms=-1", "clock_start_ms=4294967296", "clock_start_ms=1.5"]
)
def test_clock_start_ms_is_a_sim_option(bad: str) -> None:
    assert parse_options("clock_start_ms=100000").config.clock_start_ms == 100_000
    assert parse_options("clock_start_ms=4294967295").config.clock_start_ms == 2**32 - 1
    with pytest.raises(ValueError, match="clock_start_ms"):
        parse_options(bad)


def test_open_channel_is_a_sim_option() -> None:
    spec = parse_options("open_channel=2")
    h = Harness(spec.config)
    unit = spec.build_unit(h.clock)
    assert unit.impedance_ohm == [2_000, OPEN_CIRCUIT_OHM]
    assert parse_options("").build_unit(h.clock).impedance_ohm == [2_000, 2_000]
    with pytest.raises(ValueError, match=r"open_channel: channel 3 does not exist \(1..2\)"):
        parse_options("open_channel=3")
