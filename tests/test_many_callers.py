"""Many callers, one truth (issue 18, SAFETY.md 9): whatever callers do at once,
the unit runs only what the limits judged, and the record says what the unit did.

Each test is one attack from the issue, on both runners, against the simulated
unit on a manual clock (and the C unit where a unit's behaviour is involved).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from estim import aio
from estim.clock import ManualClock
from estim.device import connect as threaded_connect
from estim.errors import (
    DeviceFault,
    EstimError,
    OptionError,
    OutputLimitError,
    RemoteProtocolError,
    UnitBusy,
)
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.protocol import Fault, FaultRaised, MessageType, State, Stopped
from estim.sim import SimulatedUnit, UnitConfig, serve

from .runners import RUNNERS, AsyncFacade, SessionFacade, connector

#: the two plans of the concurrent-start attack: A gentle, B strong
GENTLE = ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)
STRONG = ChannelPlan(channel=1, frequency_hz=100, pulse_width_us=500, amplitude_ma=20)


def plan_of(channel: ChannelPlan, dwell: float = 60) -> SessionPlan:
    return SessionPlan(dwell=dwell, ramp=5, channels=[channel])


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "estim.db") as j:
        yield j


def configured(unit: SimulatedUnit, channel: int) -> tuple[int, int, int]:
    """What the unit holds for ``channel``: (frequency dHz, pulse width us, amplitude uA)."""
    c = unit._configs[channel]
    return (c.frequency_dhz, c.pulse_width_us, c.amplitude_ua)


def as_wire(channel: ChannelPlan) -> tuple[int, int, int]:
    return (
        round(channel.frequency_hz * 10),
        channel.pulse_width_us,
        round(channel.amplitude_ma * 1000),
    )


def start_at_once(
    device: Any, clock: ManualClock, plans: list[SessionPlan], journal: Journal
) -> list[Any]:
    """Start every plan on ``device`` at the same instant: threads released by one
    barrier (the threaded runner), or ``asyncio.gather`` (the asyncio one). Each
    result is a session or the exception its start raised."""
    if isinstance(device, AsyncFacade):

        async def all_at_once() -> list[Any]:
            return await asyncio.gather(
                *(device._device.start(p, journal=journal) for p in plans),
                return_exceptions=True,
            )

        return [
            r if isinstance(r, BaseException) else SessionFacade(device, r)
            for r in device.run(all_at_once())
        ]
    results: list[Any] = [None] * len(plans)
    barrier = threading.Barrier(len(plans))
    done = [clock.signal() for _ in plans]

    def caller(i: int) -> None:
        barrier.wait()
        try:
            results[i] = device.start(plans[i], journal=journal)
        except BaseException as err:  # the result under test
            results[i] = err
        finally:
            done[i].set()

    threads = [
        clock.start_thread(lambda i=i: caller(i), name=f"caller {i}") for i in range(len(plans))
    ]
    for signal in done:
        signal.wait()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("runner", RUNNERS)
def test_two_starts_at_once_start_one_session_that_runs_its_own_plan(
    runner: str, journal: Journal
) -> None:
    """Issue 18.1: the second start's CONFIGURE_CHANNEL must never reach the unit
    while the first session starts (or runs); the second start is refused."""
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url, connector(runner, clock)(f"{url}?delay=1&delay_ms=20") as device:
        results = start_at_once(device, clock, [plan_of(GENTLE), plan_of(STRONG)], journal)
        started = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(started) == 1, results
        assert len(refused) == 1, refused
        assert isinstance(refused[0], UnitBusy), refused
        assert "busy" in str(refused[0])
        session = started[0]
        ours = session.plan.channels[0]
        assert configured(unit, 1) == as_wire(ours)
        assert unit.session_id == session.session_id
        session.stop()
        record = session.wait(timeout=10)
    assert record.plan.channels[0] == ours
    assert len(journal.query()) == 1  # a refused start leaves no record: nothing was sent


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_start_while_a_session_runs_is_refused_and_sends_nothing(
    runner: str, journal: Journal
) -> None:
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url, connector(runner, clock)(url) as device:
        first = device.start(plan_of(GENTLE), journal=journal)
        clock.advance(6)
        seen = dict(unit.requests_seen)
        with pytest.raises(UnitBusy, match=f"session {first.id}"):
            device.start(plan_of(STRONG), journal=journal)
        assert configured(unit, 1) == as_wire(GENTLE)
        assert {
            k: v
            for k, v in unit.requests_seen.items()
            if k.name != "HEARTBEAT" and k.name != "GET_STATUS"
        } == {k: v for k, v in seen.items() if k.name != "HEARTBEAT" and k.name != "GET_STATUS"}
        first.stop()
        first.wait(timeout=10)
        second = device.start(plan_of(STRONG), journal=journal)  # once it has ended: fine
        second.stop()
        assert second.wait(timeout=10).outcome == "stopped"
    assert isinstance(UnitBusy("x"), EstimError)


# --- 18.2: what was judged is what runs --------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_plan_changed_under_a_running_session_changes_nothing_it_judges(
    runner: str, journal: Journal
) -> None:
    """The attack: the unit runs 100 Hz / 500 us; the caller's plan object is made to
    say 2 Hz / 250 us (frozen models can be forced), then 200 mA is asked for. Judged
    at 2 Hz that is 6.3 mA r.m.s.; at what the unit runs it is 63.2 mA, past the
    50 mA of IEC 60601-2-10. The session judges its own copy: refused."""
    clock = ManualClock()
    unit = SimulatedUnit(
        UnitConfig(amplitude_max_ua=200_000, slew_max_ua_per_s=100_000), clock=clock
    )
    plan = plan_of(STRONG)
    with serve(unit) as url, connector(runner, clock)(url) as device:
        session = device.start(plan, journal=journal)
        clock.advance(6)
        with pytest.raises(TypeError):
            plan.channels[0] = GENTLE  # type: ignore[index]
        object.__setattr__(plan, "channels", (GENTLE,))
        plan.__dict__["channels"] = (GENTLE,)
        with pytest.raises(OutputLimitError, match=r"r\.m\.s"):
            session.set_amplitude(1, 200)
        clock.advance(2)
        assert max(unit.output_ua(1, t) for t in (clock.now(),)) <= 20_000
        assert rms_ma(STRONG, unit.output_ua(1) / 1000) <= 50
        session.stop()
        record = session.wait(timeout=10)
    assert record.plan.channels == (STRONG,)
    assert record == journal.get(record.id)


def rms_ma(channel: ChannelPlan, peak_ma: float) -> float:
    return peak_ma * (2 * channel.pulse_width_us * 1e-6 * channel.frequency_hz) ** 0.5


class UnitThatRunsOtherThanTold(SimulatedUnit):
    """Takes every CONFIGURE_CHANNEL, but runs twice the amplitude it was given."""

    def _configure(self, m: Any) -> Any:
        answer = super()._configure(m)
        self._configs[m.channel] = replace(m, amplitude_ua=2 * m.amplitude_ua)
        return answer


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_unit_that_reports_another_setting_than_the_plan_is_stopped(
    runner: str, journal: Journal
) -> None:
    clock = ManualClock()
    unit = UnitThatRunsOtherThanTold(clock=clock)
    with serve(unit) as url, connector(runner, clock)(url) as device:
        session = device.start(plan_of(GENTLE), journal=journal)
        record = session.wait(timeout=10)
        assert not unit.output_on
    assert record.outcome == "faulted"
    assert "channel 1" in record.stop_reason
    assert "10 mA" in record.stop_reason
    assert "5 mA" in record.stop_reason
    assert record.delivered_s is not None
    assert record.delivered_s <= 1.5


# --- 18.9: a unit's FAULT stops the session from the host --------------------------------


class UnitThatFaultsAndRunsOn(SimulatedUnit):
    """Reports a fault, and keeps its output on as if nothing had happened."""

    def _fault(self, fault: Fault, channel: int, t: int) -> None:
        self._faults |= 1 << (fault - 1)
        self._emit(FaultRaised, t, session_id=self.session_id, fault=int(fault), channel=channel)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_fault_the_unit_reports_stops_the_session_even_if_the_unit_runs_on(
    runner: str, journal: Journal
) -> None:
    clock = ManualClock()
    unit = UnitThatFaultsAndRunsOn(clock=clock)
    with serve(unit) as url, connector(runner, clock)(url) as device:
        session = device.start(plan_of(GENTLE), journal=journal)
        clock.advance(10)
        unit.over_current(1)
        record = session.wait(timeout=5)
        assert not unit.output_on  # the host's STOP turned it off
        stopped_at = unit.events("output_off")[-1].t
    assert record.outcome == "faulted"
    assert "OVER_CURRENT" in (record.stop_reason or "")
    assert stopped_at - 10 <= 0.2  # one turn of the loop, not the 50 s of the dwell left
    assert record.delivered_s == pytest.approx(10.0, abs=0.2)


# --- 18.13: numbers from a unit are checked before they enter a record or a division -----


class UnitThatOverstatesDelivery(SimulatedUnit):
    def _stop(self, reason: int, now: int) -> None:
        s = self._session
        if s is None:
            return
        self._end_session(now, "stop")
        self._emit(Stopped, now, session_id=s.id, reason=reason, delivered_ms=0xFFFFFFFF)
        self._set_state(State.IDLE, now)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_delivered_time_longer_than_the_session_is_not_recorded(
    runner: str, journal: Journal
) -> None:
    clock = ManualClock()
    unit = UnitThatOverstatesDelivery(clock=clock)
    with serve(unit) as url, connector(runner, clock)(url) as device:
        session = device.start(plan_of(GENTLE), journal=journal)
        clock.advance(10)
        session.stop()
        record = session.wait(timeout=5)
    assert record.outcome == "stopped"
    assert record.delivered_s is None
    assert "4294967" in (record.stop_reason or "")
    assert "not believed" in (record.stop_reason or "")
    assert journal.get(record.id) == record


class UnitWithAZeroStep(SimulatedUnit):
    def _hello(self, m: Any) -> Any:
        return replace(super()._hello(m), amplitude_step_ua=0)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_unit_that_reports_impossible_limits_is_refused_at_connect(runner: str) -> None:
    clock = ManualClock()
    with (
        serve(UnitWithAZeroStep(clock=clock)) as url,
        pytest.raises(RemoteProtocolError, match="amplitude step of 0 mA"),
    ):
        connector(runner, clock)(url)


# --- 18.14: the host's clock jumps ---------------------------------------------------------


class JumpingClock:
    """The host's clock over a manual clock the unit keeps: ``jump(s)`` moves only
    the host's reading, as a stepped or suspended host clock would."""

    def __init__(self, base: ManualClock) -> None:
        self.base = base
        self.offset = 0.0

    def now(self) -> float:
        return self.base.now() + self.offset

    def signal(self) -> Any:
        return self.base.signal()

    def start_thread(self, target: Any, name: str) -> threading.Thread:
        return self.base.start_thread(target, name)

    def sleep(self, seconds: float) -> None:
        self.base.sleep(seconds)


class JumpingLoop(aio.ManualClockLoop):
    def __init__(self, clock: ManualClock, jumping: JumpingClock) -> None:
        super().__init__(clock)
        self.jumping = jumping

    def time(self) -> float:
        return self.jumping.now()


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_host_clock_that_jumps_ahead_does_not_record_a_short_session_as_completed(
    runner: str, journal: Journal
) -> None:
    clock = ManualClock()
    host = JumpingClock(clock)
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url:
        if runner == "threads":
            device: Any = threaded_connect(url, clock=host)
        else:
            device = AsyncFacade(url, clock, loop=JumpingLoop(clock, host))
        with device:
            session = device.start(plan_of(GENTLE), journal=journal)
            clock.advance(20)
            host.offset += 5.0
            record = session.wait(timeout=120)
    assert record.delivered_s == pytest.approx(55.0, abs=0.3)
    assert record.outcome != "completed"
    assert "55" in (record.stop_reason or "")
    assert "clock" in (record.stop_reason or "")


# --- 18.5 and 18.8: every number the API takes is bounded ---------------------------------

BAD_STATUS_EVERY = [0, -1, 0.001, 0.1, 61, float("nan"), float("inf"), "1", True, None]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("value", BAD_STATUS_EVERY, ids=repr)
def test_a_status_period_outside_its_range_is_refused_before_anything_is_sent(
    runner: str, value: Any, journal: Journal
) -> None:
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url, connector(runner, clock)(url) as device:
        seen = dict(unit.requests_seen)
        with pytest.raises(OptionError, match="status_every") as refused:
            device.start(plan_of(GENTLE), journal=journal, status_every=value)
        assert "\n" not in str(refused.value)
        assert "0.25-60 s" in str(refused.value)
        assert dict(unit.requests_seen) == seen
        assert journal.query() == []
        session = device.start(
            plan_of(GENTLE), journal=journal, status_every=0.25
        )  # the unit is free
        session.stop()
        session.wait(timeout=10)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("response_timeout", 0),
        ("response_timeout", -0.1),
        ("response_timeout", 30),
        ("retries", -1),
        ("retries", 1.5),
        ("retries", 1000),
        ("baudrate", 0),
        ("baudrate", float("nan")),
    ],
)
def test_connect_refuses_options_outside_their_range(runner: str, option: str, value: Any) -> None:
    clock = ManualClock()
    with serve(SimulatedUnit(clock=clock)) as url, pytest.raises(OptionError, match=option):
        connector(runner, clock)(url, **{option: value})


@pytest.mark.parametrize("runner", RUNNERS)
def test_stop_and_wait_refuse_times_outside_their_range(runner: str, journal: Journal) -> None:
    clock = ManualClock()
    with serve(SimulatedUnit(clock=clock)) as url, connector(runner, clock)(url) as device:
        for value in (0, -1, float("nan"), 3600):
            with pytest.raises(OptionError, match="give_up_after"):
                device.stop(give_up_after=value)
        session = device.start(plan_of(GENTLE), journal=journal, heartbeat=0.05)
        with pytest.raises(OutputLimitError, match="heartbeat"):
            device.start(plan_of(GENTLE), journal=journal, heartbeat=0.001)  # (checked first)
        if runner == "threads":
            for value in (-1, float("nan")):
                with pytest.raises(OptionError, match="timeout"):
                    session.wait(timeout=value)
            with pytest.raises(OptionError, match="timeout"):
                session.set_amplitude(1, 6, timeout=0)
        session.stop()
        assert session.wait(timeout=10).outcome == "stopped"


# --- 18.12: the leftover-output check at connect is asked again, as HELLO is ----------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_lost_status_answer_at_connect_is_asked_again(runner: str) -> None:
    """HELLO is answered; then every byte is lost for 0.32 s, long enough for the
    STATUS that checks for an orphaned output to use up its three attempts. At
    0.3 % byte drop this failed 1 connect in 100."""
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with (
        serve(unit) as url,
        connector(runner, clock)(f"{url}?delay=1&delay_ms=20&cut_at=0.03:0.32") as device,
    ):
        assert device.status().state == State.IDLE
    assert unit.requests_seen[MessageType.GET_STATUS] >= 2


# --- 18.6: nothing slow runs on an event loop ---------------------------------------------


def test_opening_the_default_journal_never_blocks_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``start(journal=None)`` after a crash: the default journal's recovery must
    write, while another program holds the journal. It waited on the event loop
    (~9 s), and another unit on the same loop got a WATCHDOG fault. Real time: two
    simulated units, a 200 ms watchdog on the first."""
    import sqlite3
    import time

    default = tmp_path / "default.db"
    monkeypatch.setenv("ESTIM_DB", str(default))
    with Journal(default) as crashed:  # a session left unfinished by a host that died
        crashed.begin(0x1234, plan={}, unit=UNIT_FIELDS, port="sim://", planned_ms=60_000)
    first, second = SimulatedUnit(), SimulatedUnit()
    beats_while_locked: list[int] = []
    locked, released = threading.Event(), threading.Event()

    def other_program() -> None:
        db = sqlite3.connect(default, timeout=0, isolation_level=None)
        try:
            db.execute("BEGIN EXCLUSIVE")
            locked.set()
            start = first.requests_seen[MessageType.HEARTBEAT]
            end = time.monotonic() + 3.0
            while time.monotonic() < end and not released.is_set():
                if first.requests_seen[MessageType.HEARTBEAT] - start >= 8:
                    break  # the first unit's loop went on while the journal was locked
                released.wait(0.01)
            beats_while_locked.append(first.requests_seen[MessageType.HEARTBEAT] - start)
            db.execute("ROLLBACK")
        finally:
            db.close()

    async def main(url1: str, url2: str) -> tuple[Any, Any]:
        async with aio.connect(url1) as a, aio.connect(url2) as b:
            plan = SessionPlan(dwell=60, ramp=1, watchdog=0.2, channels=[GENTLE])
            sa = await a.start(plan, journal=journal_a)
            holder = threading.Thread(target=other_program)
            holder.start()
            locked.wait(5)
            try:
                sb = await b.start(plan_of(GENTLE), journal=None)
            finally:
                released.set()
                holder.join()
            await sb.stop()
            await sa.stop()
            return await sa.wait(), await sb.wait()

    with serve(first) as url1, serve(second) as url2, Journal(tmp_path / "a.db") as journal_a:
        record_a, record_b = asyncio.run(main(url1, url2))
    assert record_a.outcome == "stopped", record_a.stop_reason
    assert record_a.faults == []
    assert beats_while_locked[0] >= 8
    assert record_b.outcome == "stopped"
    gap = first.events("output_off")[-1].data["max_frame_gap_ms"]
    assert gap < 150


UNIT_FIELDS = {
    "model": "estim-sim",
    "serial_number": "SIM-0001",
    "firmware": "sim-1.0",
    "simulated": True,
}


# --- issue 20: DeviceFault is raised where a unit fault ended the session -----------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_command_to_a_session_a_unit_fault_ended_raises_device_fault(
    runner: str, journal: Journal
) -> None:
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url, connector(runner, clock)(url) as device:
        session = device.start(plan_of(GENTLE), journal=journal)
        clock.advance(8)
        unit.over_current(1)
        assert session.wait(timeout=5).outcome == "faulted"
        with pytest.raises(DeviceFault, match="OVER_CURRENT") as raised:
            session.set_amplitude(1, 6)
    assert raised.value.code == Fault.OVER_CURRENT
    assert raised.value.channel == 1


# --- PROTOCOL.md 1.4 (issue 22): hosts pick increasing session ids ------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_many_sessions_on_one_unit_are_never_refused_as_ended(
    runner: str, journal: Journal
) -> None:
    """A unit remembers the last E ended ids and a floor (E = 64 on the simulator);
    random ids were refused SESSION_ENDED once the floor passed them. Each id is
    above the last one, across reconnects: 90 sessions, none refused."""
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    ids: list[int] = []
    with serve(unit) as url:
        for _connection in range(3):
            with connector(runner, clock)(url) as device:
                for _ in range(30):
                    session = device.start(plan_of(GENTLE), journal=journal)
                    session.stop()
                    assert session.wait(timeout=10).outcome == "stopped"
                    ids.append(session.session_id)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids) == 90
    steps = [b - a for a, b in itertools.pairwise(ids)]
    assert min(steps) >= 1
    assert max(steps) <= 65_536
