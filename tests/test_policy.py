"""The session policy and host core as pure code (issue 10): no thread, no port;
the rig carries bytes between the core and a simulated unit and moves time.

Each test is a rule of SAFETY.md or an item of issue 10, judged from the unit's
own log and the policy's record."""

from __future__ import annotations

import pytest

from estim.errors import DeviceError, LinkLost, LinkTimeout, OutputLimitError
from estim.limits import ClinicLimits
from estim.plan import ChannelPlan
from estim.protocol import Fault, GetStatus, MessageType, Status, Stop, StopReason, decode
from estim.sim import FaultWindow, LinkFaults, UnitConfig

from .core_rig import CH1, Rig, plan

CUT = LinkFaults(drop=1.0)


def cut_both_ways(rig: Rig, start: float, seconds: float) -> None:
    window = (FaultWindow(start, start + seconds, CUT),)
    rig.h2d.windows = window
    rig.d2h.windows = window


def output_off(rig: Rig) -> dict[str, object]:
    return rig.unit.events("output_off")[-1].data


# --- SAFETY.md 1: the dwell ---------------------------------------------------------------


def test_ten_minutes_complete_exactly_with_heartbeats_100_ms_apart() -> None:
    rig = Rig()
    policy = rig.start(plan(600))
    assert rig.started() is None
    rig.wait_end(policy)
    assert (policy.outcome, policy.delivered_ms) == ("completed", 600_000)
    assert output_off(rig)["delivered_ms"] == 600_000
    assert output_off(rig)["max_frame_gap_ms"] == 100.0
    assert rig.kinds()[:3] == ["start_requested", "start_accepted", "output_started"]
    assert rig.kinds()[-1] == "ended"
    assert [r.n for r in rig.records] == list(range(len(rig.records)))


def test_the_unit_deadline_is_the_backstop_of_a_late_host_timer() -> None:
    rig = Rig()
    policy = rig.start(plan(60))
    assert policy.host_deadline is not None
    policy.host_deadline += 3600
    rig.wait_end(policy)
    assert (policy.outcome, policy.ended_by, policy.delivered_ms) == ("completed", "unit", 60_000)


def test_the_host_timer_stops_no_later_than_the_unit() -> None:
    rig = Rig()
    policy = rig.start(plan(60))
    rig.wait_end(policy)
    assert policy.outcome == "completed"
    assert policy.delivered_ms is not None
    assert policy.delivered_ms <= 60_000


# --- SAFETY.md 2 and issue 10 item 4: heartbeats are never delayed ---------------------------


def test_an_unanswered_request_never_delays_a_heartbeat() -> None:
    rig = Rig()
    policy = rig.start(plan())
    rig.run(10)
    # the unit's answers are lost for 450 ms: a status poll and an amplitude change
    # wait, are resent, and give up; the heartbeats go on regardless
    rig.d2h.windows = (FaultWindow(rig.now, rig.now + 0.45, CUT),)
    token = rig.set_amplitude(policy, 1, 13.0)
    rig.run(0.15)
    assert token not in rig.results  # still waiting for its answer
    rig.run(5)
    assert isinstance(rig.error(token), LinkTimeout)
    # the unit did take it (its AMPLITUDE_REACHED was lost too): the record says the
    # change was not confirmed, and the next status poll shows where the unit is
    assert "amplitude_unconfirmed" in rig.kinds()
    assert policy.last_status is not None
    assert policy.last_status.channels[0].setpoint_ma == 13.0
    assert rig.unit.faults == set()
    rig.stop(policy)
    rig.wait_end(policy)
    assert policy.outcome == "stopped"
    assert output_off(rig)["max_frame_gap_ms"] <= 100.0


def test_a_request_whose_first_answer_is_lost_is_resent_with_the_same_bytes() -> None:
    rig = Rig()
    policy = rig.start(plan())
    rig.run(10)
    rig.d2h.windows = (FaultWindow(rig.now, rig.now + 0.15, CUT),)
    token = rig.set_amplitude(policy, 1, 13.0)
    rig.run(1)
    assert rig.results[token] is None
    assert len(rig.unit.events("setpoint")) == 1  # resent, carried out once


def test_a_lost_heartbeat_is_followed_by_another_within_50_ms() -> None:
    rig = Rig()
    policy = rig.start(plan())
    rig.run(10)
    # every byte to the unit lost for 210 ms; the last heartbeat it heard was at most
    # 100 ms before. Resending every 50 ms while unanswered, the first one after the cut
    # arrives within 50 ms of its end (every 100 ms, it could take 100 ms)
    rig.h2d.windows = (FaultWindow(rig.now, rig.now + 0.21, CUT),)
    rig.run(1)
    rig.stop(policy)
    rig.wait_end(policy)
    assert output_off(rig)["max_frame_gap_ms"] <= 100.0 + 210.0 + 50.0


@pytest.mark.parametrize("seed", [1, 2])
def test_a_lossy_line_makes_no_false_watchdog_fault(seed: int) -> None:
    # issue 10: at drop=0.003 a session latched a WATCHDOG fault at 37 s on main
    rig = Rig(faults=LinkFaults(drop=0.003), seed=seed)
    policy = rig.start(plan(600))
    rig.wait_end(policy)
    assert rig.h2d.stats.dropped + rig.d2h.stats.dropped > 50
    assert (policy.outcome, rig.unit.faults) == ("completed", set())


# --- issue 10 item 4: link cuts ------------------------------------------------------------


def test_a_cut_shorter_than_the_watchdog_less_a_heartbeat_period_is_ridden_out() -> None:
    rig = Rig()
    policy = rig.start(plan(60))
    rig.run(8)
    cut_both_ways(rig, rig.now, 0.3)
    rig.wait_end(policy)
    assert (policy.outcome, policy.delivered_ms) == ("completed", 60_000)
    assert rig.unit.faults == set()


def test_a_long_cut_is_recorded_as_the_unit_watchdog_stop_once_the_link_returns() -> None:
    rig = Rig()
    policy = rig.start(plan(60))
    rig.run(8)
    cut_both_ways(rig, rig.now, 2.0)
    rig.wait_end(policy)
    assert rig.unit.faults == {Fault.WATCHDOG}
    assert policy.outcome == "faulted"
    assert "WATCHDOG" in (policy.stop_reason or "")
    assert "silent" in (policy.stop_reason or "")
    assert "unit_silent" in rig.kinds()


def test_a_unit_that_never_answers_again_is_link_lost_and_its_watchdog_acts() -> None:
    rig = Rig()
    policy = rig.start(plan(60))
    rig.run(8)
    cut_both_ways(rig, rig.now, 1e9)
    rig.wait_end(policy)
    assert policy.outcome == "link_lost"
    assert policy.unit_unreachable
    assert rig.core.lost is not None
    assert rig.unit.faults == {Fault.WATCHDOG}
    assert not rig.unit.output_on


def test_a_unit_whose_answers_are_lost_is_stopped_by_the_host_before_its_watchdog() -> None:
    rig = Rig()
    policy = rig.start(plan(60))
    rig.run(8)
    rig.d2h.windows = (FaultWindow(rig.now, rig.now + 1.0, CUT),)
    rig.wait_end(policy)
    assert output_off(rig)["reason"] == "stop"  # the host's STOP, not the watchdog
    assert rig.unit.faults == set()
    assert policy.outcome == "link_lost"
    assert "the host stopped output once the unit answered" in (policy.stop_reason or "")
    assert policy.delivered_ms is None  # its STOPPED was lost with the line: unknown, not guessed


# --- issue 10 item 5: a frozen host ---------------------------------------------------------


def test_a_host_frozen_for_4_s_records_the_unit_watchdog_stop_and_delivered_time() -> None:
    rig = Rig()
    policy = rig.start(plan(600))
    rig.run(5.9)
    rig.frozen = True  # SIGSTOP: the unit runs on, its FAULT and STOPPED wait on the line
    rig.run(4.0)
    rig.frozen = False
    rig.run(1.0)
    assert policy.done
    assert policy.outcome == "faulted"
    assert "WATCHDOG" in (policy.stop_reason or "")
    assert "stalled" in (policy.stop_reason or "")
    assert policy.delivered_ms == output_off(rig)["delivered_ms"]
    assert "host_stalled" in rig.kinds()


# --- issue 10 item 1: every live change is limited ------------------------------------------


def test_a_live_change_past_the_clinic_limit_is_refused_before_sending() -> None:
    rig = Rig(clinic=ClinicLimits(amplitude_max_ma=6))
    policy = rig.start(plan(channels=[CH1.model_copy(update={"amplitude_ma": 5})]))
    rig.run(10)
    token = rig.set_amplitude(policy, 1, 9.0)
    assert isinstance(rig.error(token), OutputLimitError)
    assert "clinic's maximum 6 mA" in str(rig.error(token))
    assert rig.unit.requests_seen[MessageType.SET_AMPLITUDE] == 0
    assert rig.records[-1].kind == "amplitude_refused"
    assert rig.results[rig.set_amplitude(policy, 1, 6.0)] is None


def test_a_live_change_past_50_ma_rms_is_refused_on_a_200_ma_unit() -> None:
    big = UnitConfig(amplitude_max_ua=200_000, amplitude_step_ua=500, slew_max_ua_per_s=100_000)
    rig = Rig(big)
    fast = ChannelPlan(channel=1, frequency_hz=100, pulse_width_us=500, amplitude_ma=20)
    policy = rig.start(plan(channels=[fast]))
    rig.run(10)
    token = rig.set_amplitude(policy, 1, 200.0)
    assert "r.m.s." in str(rig.error(token))
    assert rig.unit.requests_seen[MessageType.SET_AMPLITUDE] == 0
    assert rig.results[rig.set_amplitude(policy, 1, 158.0)] is None


def test_a_change_the_unit_refuses_is_a_device_error() -> None:
    rig = Rig()
    policy = rig.start(plan())
    rig.run(10)
    rig.stop(policy)
    token = rig.set_amplitude(policy, 1, 10.0)
    assert "has ended" in str(rig.error(token))


# --- SAFETY.md 5 and 7: every stop path ------------------------------------------------------


def test_operator_stop_records_the_unit_s_delivered_time() -> None:
    rig = Rig()
    policy = rig.start(plan())
    rig.run(10)
    token = rig.stop(policy)
    assert rig.results[token] is None
    assert not rig.unit.output_on
    rig.wait_end(policy)
    assert (policy.outcome, policy.delivered_ms) == ("stopped", 10_000)


def test_a_stop_is_handed_to_the_runner_before_its_record_is_built() -> None:
    """The runner writes ``take().writes`` first; building the ``stop_requested`` record
    (a validated model, cold in a thread just woken) waits until ``records()``."""
    rig = Rig()
    policy = rig.start(plan())
    rig.run(10)
    made = len(policy.events)
    rig.core.stop_session(policy, StopReason.OPERATOR, "stopped by the test", rig.now, "t")
    out = rig.core.take()
    assert [type(decode(w)) for w in out.writes] == [Stop]
    assert len(policy.events) == made
    assert [record.kind for _, record, _ in out.records()] == ["stop_requested"]
    assert policy.events[-1].kind == "stop_requested"
    assert out.records() == []  # each record is handed over once


def test_a_journal_event_not_durable_within_1_s_stops_output() -> None:
    rig = Rig()
    policy = rig.start(plan())
    rig.run(10)
    rig.journal_ok = False  # the journal is locked by another program from now on
    rig.set_amplitude(policy, 1, 13.0)
    failed_at = rig.now
    rig.wait_end(policy)
    assert rig.unit.events("output_off")[-1].t - failed_at <= 1.0 + 0.1
    assert policy.outcome == "aborted"
    assert (policy.stop_reason or "").startswith("journal:")
    assert policy.journal_error


def test_a_journal_failure_stops_output_at_once() -> None:
    rig = Rig()
    policy = rig.start(plan())
    rig.run(10)
    rig.core.journal_failed(policy, "disk I/O error", rig.now)
    rig.pump()
    assert not rig.unit.output_on
    rig.wait_end(policy)
    assert (policy.outcome, policy.stop_reason) == ("aborted", "journal: disk I/O error")


def test_a_callback_exception_stops_output_at_once() -> None:
    rig = Rig()
    policy = rig.start(plan())
    rig.run(10)
    rig.core.callback_failed(policy, "RuntimeError('chart widget crashed')", rig.now)
    rig.pump()
    assert not rig.unit.output_on
    rig.wait_end(policy)
    assert policy.outcome == "aborted"
    assert "chart widget crashed" in (policy.stop_reason or "")


@pytest.mark.parametrize(
    ("inject", "fault"),
    [("pull_electrode", Fault.LEAD_OFF), ("over_current", Fault.OVER_CURRENT)],
)
def test_unit_faults(inject: str, fault: Fault) -> None:
    rig = Rig()
    policy = rig.start(plan())
    rig.run(10)
    getattr(rig.unit, inject)(1)
    rig.run(0.2)
    assert policy.outcome == "faulted"
    assert fault.name in (policy.stop_reason or "")
    assert policy.delivered_ms == 10_000


def test_a_unit_restart_ends_the_session_as_a_fault() -> None:
    rig = Rig()
    policy = rig.start(plan())
    rig.run(10)
    rig.unit.reset()
    rig.run(0.5)
    assert policy.outcome == "faulted"
    assert "restarted" in (policy.stop_reason or "")


def test_a_lost_completed_event_is_still_a_completion() -> None:
    rig = Rig()
    policy = rig.start(plan(60))
    rig.run(59.5)
    policy.host_deadline = rig.now + 3600  # the unit's deadline acts, its event is lost
    rig.d2h.windows = (FaultWindow(rig.now + 0.4, rig.now + 0.6, CUT),)
    rig.wait_end(policy)
    assert (policy.outcome, policy.ended_by) == ("completed", "unit")
    assert "event was lost" in (policy.stop_reason or "")


def test_a_refused_start_is_a_device_error_and_no_output() -> None:
    rig = Rig()
    rig.unit.pull_electrode(1)
    policy = rig.start(plan())
    assert isinstance(rig.started(), DeviceError)
    assert "electrode not connected" in str(rig.started())
    assert policy.outcome == "refused"
    assert not rig.unit.output_on


# --- callers of the core ---------------------------------------------------------------------


def test_a_start_after_the_link_was_lost_ends_its_session_at_once() -> None:
    """The port can fail while "start requested" is being committed (off the control
    loop): the session made for it must still end, or whoever waits for it waits forever."""
    rig = Rig()
    rig.core.port_failed(LinkLost("lost the port rig: gone"), rig.now)
    policy = rig.start(plan())
    assert policy.done
    assert policy.outcome == "link_lost"
    assert isinstance(rig.started(), LinkLost)
    assert rig.kinds()[-1] == "ended"
    assert not rig.unit.output_on


def test_a_configure_lost_three_times_is_asked_again_as_a_new_request() -> None:
    """Nothing can be on while configuring, so a noisy line does not refuse the start
    there (the full lossy run: 1 start in 50 at 0.3% byte loss). START is not asked
    again: its attempts must end within the watchdog."""
    rig = Rig()
    cut_both_ways(rig, rig.now, 0.35)  # every attempt of the first CONFIGURE_CHANNEL
    policy = rig.start(plan())
    rig.run(2.0)
    assert rig.started() is None
    assert rig.unit.output_on
    assert policy.outcome is None


def test_a_unit_that_never_answers_configure_refuses_the_start_within_a_second() -> None:
    rig = Rig()
    cut_both_ways(rig, rig.now, 3600)
    policy = rig.start(plan())
    rig.run(1.0)
    assert isinstance(rig.started(), LinkLost)
    assert "did not answer CONFIGURE_CHANNEL" in str(rig.started())
    rig.wait_end(policy)
    assert not rig.unit.output_on


def test_a_request_gets_its_answer_or_a_timeout() -> None:
    rig = Rig()
    assert isinstance(rig.request(GetStatus()), Status)
    rig.d2h.windows = (FaultWindow(rig.now, rig.now + 10, CUT),)
    token = rig.token()
    rig.core.request(GetStatus(), rig.now, token)
    rig.run(0.35)
    assert isinstance(rig.results[token], LinkTimeout)
    assert rig.core.lost is None  # one unanswered request does not lose the link


def test_a_stop_nobody_acknowledges_gives_up_after_a_watchdog_period() -> None:
    rig = Rig()
    rig.d2h.windows = (FaultWindow(rig.now, rig.now + 10, CUT),)
    token = rig.token()
    rig.core.stop(StopReason.OPERATOR, rig.now, token, give_up_after=0.5)
    rig.run(0.6)
    assert "not acknowledged" in str(rig.results[token])
    assert rig.core.lost is not None


def test_a_late_ack_of_an_older_amplitude_change_does_not_undo_a_newer_one() -> None:
    """13 mA is carried out, its ACK lost; 11 mA is carried out and ACKed; the 13's
    resend gets the unit's remembered ACK (PROTOCOL.md 10: not carried out again). The
    old ACK made 13 the only setpoint allowed, and the unit's 11 stopped the session
    as a unit fault."""
    from estim.sim import FaultWindow, LinkFaults

    rig = Rig()
    policy = rig.start(plan())
    rig.run(10)
    rig.d2h.windows = (FaultWindow(rig.now, rig.now + 0.01, LinkFaults(drop=1.0)),)
    rig.set_amplitude(policy, 1, 13.0)  # carried out; its ACK lost
    rig.run(0.02)
    rig.set_amplitude(policy, 1, 11.0)  # carried out, ACKed
    rig.run(3)  # the 13's resend answered; STATUS polls
    assert not policy.done, [r.data for r in rig.records if r.kind == "unit_mismatch"]
    assert rig.unit.output_ua(1) == 11_000


def test_a_refused_change_to_the_amplitude_already_set_leaves_it_allowed() -> None:
    """In the unit's end ramp a change to the plan's own 12 mA is refused BAD_STATE:
    the refusal removed 12 from the setpoints allowed, and the unit's (correct) 12
    stopped a session that was completing as a unit fault."""
    from estim.protocol import State

    rig = Rig()
    policy = rig.start(plan(dwell=60))
    rig.run(50)
    while rig.unit.state != State.RAMPING_DOWN:
        rig.run(0.05)
    rig.set_amplitude(policy, 1, 12.0)
    rig.wait_end(policy)
    assert policy.outcome == "completed", [r.data for r in rig.records if r.kind == "unit_mismatch"]
