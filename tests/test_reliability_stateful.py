"""Host and simulated unit together, driven by a hypothesis state machine (issue 7).

A served ``SimulatedUnit``, a ``Device`` connected to it and a ``Journal`` in a
temporary directory share one ``ManualClock``. Rules start sessions (dwell
60-600 s, one or two channels), change amplitude, stop, let time pass (small and
large steps), hang the session loop itself (in its port read), mangle the
bytes on either line for a while (drop, corrupt, duplicate, delay), pull the
cable, close the device, make the journal refuse writes, pull electrodes, raise
faults on the unit, reset it, clear faults and reconnect. ``stop()`` and
``Device.close()`` must have turned output off when they return. After every step
the invariants of SAFETY.md are checked against the unit's own log and state, and
against the journal:

- output is non-zero only inside a period of output on the unit, before that
  period's dwell deadline, in an output state, and less than the watchdog period
  after the unit's last valid frame;
- once the host has let go of a session (it ended, however), its output lasts at
  most the watchdog period after the host's last word, whatever the host does
  next (reconnect, start again, clear a fault);
- no period of output lasted longer than its plan, or outlived a silence of more
  than its watchdog period (the unit's own ``max_frame_gap_ms``);
- every period of output has a journal session with its start record;
- every session in the journal has an outcome, or is live on the host, or ended
  because the journal failed; every ended session has a stop reason, the same
  outcome as its record (journal permitting), a delivered time within its plan and
  equal to the unit's figure, and no internal error.

Scale (see tests/reliability_helpers.py): ``ESTIM_RELIABILITY`` unset runs
``CI_EXAMPLES`` examples of up to ``CI_STEPS`` steps with a fixed seed
(derandomized); ``full`` runs many more, randomized (hypothesis prints how to
reproduce a failure); a number multiplies the example count.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from estim.clock import ClockStalled, ManualClock
from estim.device import Device, connect
from estim.errors import DeviceError, EstimError, JournalError, LinkError, OutputLimitError
from estim.journal import Journal
from estim.plan import SessionPlan
from estim.protocol import Button, Heartbeat, State, StopReason, encode
from estim.record import EventRecord, SessionRecord
from estim.session import Session
from estim.session_state import IllegalTransition
from estim.sim import FaultWindow, LinkFaults, SimulatedUnit, UnitConfig, serve

from .reliability_helpers import FULL, MULTIPLIER, make_plan, output_periods, scaled

CI_EXAMPLES = 16
CI_STEPS = 25

OUTPUT_STATES = (State.RAMPING_UP, State.RUNNING, State.RAMPING_DOWN)
#: virtual-time tolerance: the unit counts whole microseconds, the clock nanoseconds
EPS = 2e-6


@contextlib.contextmanager
def tolerated(*errors: type[BaseException]) -> Iterator[None]:
    """Refusals and link failures are outcomes the host must handle, not test
    failures; a stalled clock or an illegal transition is a bug and propagates."""
    try:
        yield
    except (ClockStalled, IllegalTransition):
        raise
    except errors:
        pass


#: how long the session loop may be made to hang, in seconds
HANGS = [0.15, 0.4, 0.7, 2.0, 30.0]


class HostAndUnit(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._stack = contextlib.ExitStack()
        self.tmp = Path(tempfile.mkdtemp(prefix="estim-reliability-"))
        self._stack.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        self.clock = ManualClock()
        self.unit = SimulatedUnit(UnitConfig(), clock=self.clock, seed=1)
        try:
            self.url = self._stack.enter_context(serve(self.unit))
            self.journal = Journal(self.tmp / "estim.db")
            self._stack.callback(self.journal.close)
            self.device: Device = self.connect()
        except BaseException:
            self._stack.close()
            raise
        self.sessions: list[Session] = []
        self.hang_for = 0.0
        self.connections = 1
        #: journal id -> clock time at which the host let go of the session (it ended)
        self.let_go: dict[str, float] = {}
        self._ended: dict[str, dict[str, float]] = {}
        #: until when delayed bytes of a mangled line may still arrive, and how late
        self.delayed_until = -1.0
        self.delay_allowance = 0.0

    # -- helpers ------------------------------------------------------------------------

    def on_event(self, event: EventRecord, ended: dict[str, float]) -> None:
        """The session's callback: notes when the session ended."""
        if event.kind == "ended":
            ended.setdefault("t", self.clock.now())

    def connect(self) -> Device:
        """A device whose session loop hangs (on the clock) once when asked: its
        I/O thread is stuck ``hang_for`` seconds where a real one can stall, in the
        port, so no heartbeat goes out meanwhile (a STOP from another thread still
        does)."""
        device = connect(self.url)
        read = device._read

        def maybe_hang(timeout: float | None) -> tuple[bytes, float]:
            if self.hang_for:
                seconds, self.hang_for = self.hang_for, 0.0
                self.clock.sleep(seconds)
            return read(timeout)

        device._read = maybe_hang  # type: ignore[method-assign]
        return device

    @property
    def session(self) -> Session | None:
        return self.sessions[-1] if self.sessions else None

    @staticmethod
    def done(session: Session) -> bool:
        try:
            session.wait(timeout=0)
        except TimeoutError:
            return False
        return True

    def live(self) -> bool:
        s = self.session
        return s is not None and not s.state.is_end

    def link_up(self) -> bool:
        return self.device.lost is None

    def finish_sessions(self) -> None:
        """Every session to its end (time moves while waiting)."""
        for s in self.sessions:
            if not self.done(s):
                s.stop()
                s.wait(timeout=3600)

    # -- rules: sessions ------------------------------------------------------------------

    plans = st.builds(
        make_plan,
        dwell=st.integers(60, 600),
        channels=st.sampled_from([(1,), (2,), (1, 2)]).flatmap(
            lambda chs: st.fixed_dictionaries(
                {ch: st.integers(10, 150).map(lambda t: t / 10) for ch in chs}
            )
        ),
        ramp=st.sampled_from([2.0, 5.0, 10.0]),
        watchdog=st.sampled_from([0.2, 0.5, 1.0]),
    )

    def _start(self, plan: SessionPlan) -> None:
        ended: dict[str, float] = {}
        before = len(self.journal.session_rows())
        try:
            session = self.device.start(
                plan, journal=self.journal, on_event=lambda e: self.on_event(e, ended)
            )
        except (ClockStalled, IllegalTransition):
            raise
        except JournalError:
            return  # "start requested" could not be committed: nothing may be sent
        except (DeviceError, LinkError):
            rows = self.journal.session_rows()
            if len(rows) > before:  # refused or lost after "start requested"
                self.let_go[rows[0]["id"]] = ended.get("t", self.clock.now())
            return
        self.sessions.append(session)
        self._ended[session.id] = ended

    @initialize(plan=plans)
    def start_first(self, plan: SessionPlan) -> None:
        assert self.unit.state == State.IDLE
        self._start(plan)
        assert self.live()

    @precondition(lambda self: not self.live() and self.link_up())
    @rule(plan=plans)
    def start(self, plan: SessionPlan) -> None:
        """Whatever state the unit is in: a refusal is an outcome too."""
        self._start(plan)

    @precondition(lambda self: not self.live())
    @rule(plan=plans)
    def start_afresh(self, plan: SessionPlan) -> None:
        """As an operator would: reconnect if need be, fix the electrodes, clear the fault."""
        if not self.link_up() or self.device.port.sim_connection.unplugged:
            self.reconnect()
        for channel in (1, 2):
            self.unit.set_impedance(channel, 2_000)
        with tolerated(DeviceError, LinkError):
            self.device.clear_fault()
        if self.link_up():
            self._start(plan)

    @precondition(lambda self: self.live())
    @rule(channel=st.sampled_from([1, 2]), tenths_ma=st.integers(0, 200))
    def set_amplitude(self, channel: int, tenths_ma: int) -> None:
        session = self.session
        assert session is not None
        with tolerated(EstimError, OutputLimitError):
            session.set_amplitude(channel, tenths_ma / 10)

    @precondition(lambda self: self.live())
    @rule()
    def stop(self) -> None:
        session = self.session
        assert session is not None
        session.stop()  # even after an earlier request_stop() the loop has not carried out
        if self.link_up():
            assert not self.unit.output_on, "stop() returned with output on"

    @precondition(lambda self: self.live())
    @rule()
    def request_stop(self) -> None:
        session = self.session
        assert session is not None
        session.request_stop()

    @precondition(lambda self: self.session is not None)
    @rule()
    def wait_for_the_end(self) -> None:
        session = self.session
        assert session is not None
        session.wait(timeout=3600)

    # -- rules: time ----------------------------------------------------------------------

    @rule(seconds=st.floats(0.001, 1.5))
    def advance_a_little(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(seconds=st.floats(5.0, 200.0))
    def advance_a_lot(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.live())
    @rule(seconds=st.sampled_from(HANGS))
    def hang_the_loop(self, seconds: float) -> None:
        self.hang_for = seconds

    # -- rules: the link ------------------------------------------------------------------

    @precondition(lambda self: self.link_up())
    @rule(
        direction=st.sampled_from(["h2d", "d2h", "both"]),
        kind=st.sampled_from(["drop", "corrupt", "duplicate", "delay"]),
        rate=st.sampled_from([0.01, 0.05, 0.3, 1.0]),
        delay_s=st.sampled_from([0.05, 0.3, 0.8]),
        duration=st.floats(0.05, 5.0),
    )
    def mangle_the_line(
        self, direction: str, kind: str, rate: float, delay_s: float, duration: float
    ) -> None:
        faults = LinkFaults(**{kind: rate}, delay_s=delay_s if kind == "delay" else 0.0)
        now = self.clock.now()
        window = FaultWindow(now, now + duration, faults)
        conn = self.device.port.sim_connection
        for name in ("h2d", "d2h") if direction == "both" else (direction,):
            line = getattr(conn, name)
            line.windows = (window,)
        if kind == "delay":
            self.delayed_until = max(self.delayed_until, now + duration + delay_s)
            self.delay_allowance = max(self.delay_allowance, delay_s + 0.3)

    @precondition(lambda self: self.link_up())
    @rule()
    def pull_the_cable(self) -> None:
        self.device.port.sim_connection.unplug()

    @precondition(lambda self: not self.link_up() or self.device.port.sim_connection.unplugged)
    @rule()
    def reconnect(self) -> None:
        self.finish_sessions()
        self.device.close()
        self.device = self.connect()
        self.connections += 1

    @rule()
    def close_the_device(self) -> None:
        """Closing the device stops its live session and any output, then reconnect."""
        was_up = self.link_up() and not self.device.port.sim_connection.unplugged
        self.device.close()
        if was_up:
            assert not self.unit.output_on, "output on after Device.close() returned"
        self.finish_sessions()
        self.device = self.connect()
        self.connections += 1

    # -- rules: the journal -----------------------------------------------------------------

    @rule(read_only=st.booleans())
    def journal_read_only(self, read_only: bool) -> None:
        """The journal refuses writes (SQLite's "readonly database"), or accepts them again."""
        with self.journal._lock:
            self.journal._db.execute(f"PRAGMA query_only = {'ON' if read_only else 'OFF'}")

    # -- rules: the unit ------------------------------------------------------------------

    @rule(channel=st.sampled_from([1, 2]))
    def pull_electrode(self, channel: int) -> None:
        self.unit.pull_electrode(channel)

    @rule(channel=st.sampled_from([1, 2]))
    def replace_electrode(self, channel: int) -> None:
        self.unit.set_impedance(channel, 2_000)

    @rule(channel=st.sampled_from([1, 2]))
    def over_current(self, channel: int) -> None:
        self.unit.over_current(channel)

    @rule()
    def press_estop(self) -> None:
        self.unit.press(Button.ESTOP)

    @rule()
    def reset_the_unit(self) -> None:
        self.unit.reset()

    @precondition(lambda self: self.link_up() and not self.live())
    @rule()
    def clear_fault(self) -> None:
        with tolerated(DeviceError, LinkError):
            self.device.clear_fault()

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def safety(self) -> None:
        self.clock.settle()  # every participant idle: the checks see a quiet system
        self.output_only_inside_a_live_bounded_session()
        self.every_period_recorded_and_within_its_plan()
        self.every_journal_session_ended_or_live()
        self.no_output_outlives_its_host()

    def output_only_inside_a_live_bounded_session(self) -> None:
        now = self.clock.now()
        periods = output_periods(self.unit.log)
        open_periods = [p for p in periods if p.off_t is None]
        assert len(open_periods) <= 1
        outputs = self.unit.outputs()
        if not any(outputs):
            return
        assert open_periods, f"output {outputs} with no period of output in the unit's log"
        period = open_periods[0]
        assert self.unit.state in OUTPUT_STATES, (self.unit.state, outputs)
        assert now < period.deadline, f"output {outputs} at {now} past the deadline {period}"
        plan = self._plan_of(period.journal_id)
        last_rx = self.unit._last_rx
        assert last_rx is not None
        silence = now - last_rx / 1e6
        assert silence <= plan.watchdog + EPS, (
            f"output {outputs} after {silence:.6f} s without a valid frame "
            f"(watchdog {plan.watchdog} s)"
        )

    def no_output_outlives_its_host(self) -> None:
        """Once the host has let go of a session (it ended: link lost, a fault, a
        refused start, ...), its output may last at most the watchdog period (plus
        the lateness of a delayed line) after the host's last word, whatever the
        host does next."""
        now = self.clock.now()
        let_go = dict(self.let_go)
        let_go.update({sid: e["t"] for sid, e in self._ended.items() if "t" in e})
        for period in output_periods(self.unit.log):
            ended = let_go.get(period.journal_id)
            if ended is None:
                continue  # the host's session is live
            end = period.off_t if period.off_t is not None else now
            if end <= ended:
                continue
            plan = self._plan_of(period.journal_id)
            late = self.delay_allowance if ended <= self.delayed_until else 0.0
            since = max(ended, period.on_t)
            assert end <= since + plan.watchdog + late + EPS, (
                f"output went on {end - since:.3f} s after the host let go of session "
                f"{period.journal_id} at t={ended:.3f} (watchdog {plan.watchdog} s): {period}"
            )

    def every_period_recorded_and_within_its_plan(self) -> None:
        for period in output_periods(self.unit.log):
            row = self.journal.session_row(period.journal_id)
            assert row is not None, f"output without a journal session: {period}"
            first = self.journal.event_rows(period.journal_id)[0]
            assert first["n"] == 0, first
            assert first["kind"] == "start_requested", first
            assert period.dwell_ms == row["planned_ms"], (period, row["planned_ms"])
            if period.off_t is not None:
                assert period.off_t - period.on_t <= period.dwell_ms / 1000 + EPS, period
                assert period.delivered_ms is not None
                assert period.delivered_ms <= row["planned_ms"], period
                plan = self._plan_of(period.journal_id)
                assert period.max_frame_gap_ms is not None
                assert period.max_frame_gap_ms <= plan.watchdog * 1000 + 0.002, (
                    f"output stayed on through {period.max_frame_gap_ms} ms of silence "
                    f"(watchdog {plan.watchdog} s): {period}"
                )

    def every_journal_session_ended_or_live(self) -> None:
        live = {s.id for s in self.sessions if not self.done(s)}
        unwritable = {s.id for s in self.sessions if s.id not in live and s.record().journal_error}
        for row in self.journal.session_rows():
            if row["outcome"] is None:
                assert row["id"] in live | unwritable, (
                    f"session {row['id']} has no outcome, is not live, and its journal was fine"
                )
        by_id = {p.journal_id: p for p in output_periods(self.unit.log) if p.off_t is not None}
        for s in self.sessions:
            if s.id in live:
                continue
            record = s.record()
            self._check_record(record)
            row = self.journal.session_row(s.id)
            assert row is not None
            if record.journal_error:
                # the journal failed mid-session: the host stopped output (SAFETY.md 7)
                assert record.outcome in ("aborted", "link_lost", "faulted", "completed", "stopped")
                assert row["outcome"] in (None, record.outcome)
            else:
                assert row["outcome"] == record.outcome, (row, record.outcome)
                stored = SessionRecord.from_journal(row, self.journal.event_rows(s.id))
                assert stored.delivered_s == record.delivered_s
            if record.delivered_s is not None and s.id in by_id:
                assert by_id[s.id].delivered_ms == round(record.delivered_s * 1000), (
                    f"the record's delivered time is not the unit's: {record.delivered_s} s vs "
                    f"{by_id[s.id]}"
                )

    # -- checks -------------------------------------------------------------------------------

    def _plan_of(self, journal_id: str) -> SessionPlan:
        import json

        row = self.journal.session_row(journal_id)
        assert row is not None
        return SessionPlan.model_validate(json.loads(row["plan"]))

    @staticmethod
    def _check_record(record: SessionRecord) -> None:
        assert record.outcome is not None, record.id
        assert record.stop_reason, f"session {record.id} ended ({record.outcome}) with no reason"
        assert "internal error" not in record.stop_reason, (
            f"session {record.id} ended on a host bug: {record.stop_reason}"
        )
        if record.delivered_s is not None:
            assert record.delivered_s <= record.planned_s, record

    # -- teardown -------------------------------------------------------------------------------

    def teardown(self) -> None:
        self.hang_for = 0.0
        try:
            self.finish_sessions()
            self.device.close()
            # the unit's watchdog or deadline ends any output the host let go of
            self.clock.advance(3.0)
            assert not self.unit.output_on
            if currently_in_test_context():  # what the run exercised (--hypothesis-show-statistics)
                for s in self.sessions:
                    event(f"session {s.record().outcome}")
                for p in output_periods(self.unit.log):
                    event(f"output off: {p.reason}")
        finally:
            with contextlib.suppress(Exception):
                self.device.close()
            # a hang this harness put in the loop of a device it closed meanwhile (up to
            # 30 s of virtual time) ends, so that device's I/O thread can return
            with contextlib.suppress(Exception):
                self.clock.advance(max(HANGS))
            self._stack.close()


SETTINGS = settings(
    max_examples=scaled(CI_EXAMPLES, 400),
    stateful_step_count=CI_STEPS if not FULL else 60,
    deadline=None,
    derandomize=not FULL,
    database=None if not FULL else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


#: random sequences of sessions, faults and link trouble never break SAFETY.md
TestHostAndUnitKeepTheSafetyInvariants = HostAndUnit.TestCase
TestHostAndUnitKeepTheSafetyInvariants.settings = SETTINGS


@pytest.mark.skipif(MULTIPLIER != 1.0 or FULL, reason="the CI-size sanity check only")
def test_the_state_machine_exercises_what_it_claims() -> None:
    """A fixed run through the rules: the checks see output, faults and link loss,
    so the invariants above are not vacuous."""
    machine = HostAndUnit()
    try:
        machine.start_first(make_plan(60, {1: 5.0, 2: 5.0}, ramp=2.0))
        machine.advance_a_little(1.0)
        assert machine.unit.output_on
        machine.output_only_inside_a_live_bounded_session()
        machine.hang_the_loop(2.0)
        machine.advance_a_little(1.5)  # the loop hangs; the unit's watchdog acts
        machine.every_period_recorded_and_within_its_plan()
        machine.wait_for_the_end()
        record = machine.sessions[-1].record()
        assert record.outcome == "faulted"
        assert "WATCHDOG" in (record.stop_reason or "")
        machine.clear_fault()
        machine.start(make_plan(60, {1: 5.0}, ramp=2.0))
        machine.advance_a_little(1.0)
        machine.pull_the_cable()
        machine.advance_a_little(1.0)
        machine.output_only_inside_a_live_bounded_session()
        machine.every_journal_session_ended_or_live()
        machine.reconnect()
        assert machine.sessions[-1].record().outcome == "link_lost"
        machine.every_journal_session_ended_or_live()
        periods = output_periods(machine.unit.log)
        assert [p.reason for p in periods] == ["fault:WATCHDOG", "fault:WATCHDOG"]
        machine.safety()
        # an orphaned output kept alive by someone feeding the unit's watchdog with the
        # session's own heartbeats (injected straight into the unit here, not by estim)
        # is caught
        machine.start_afresh(make_plan(60, {1: 5.0}, ramp=2.0))
        machine.advance_a_little(1.0)
        live_id = machine.sessions[-1].session_id
        machine.pull_the_cable()
        for seq in range(5):
            machine.advance_a_little(0.2)
            machine.unit.receive(encode(Heartbeat(seq=seq, session_id=live_id)))
        assert machine.unit.output_on
        with pytest.raises(AssertionError, match="after the host let go"):
            machine.no_output_outlives_its_host()
    finally:
        machine.teardown()


def test_stop_turns_output_off_even_after_a_stop_request(
    estim_unit: SimulatedUnit, estim_url: str, estim_clock: ManualClock, tmp_path: Path
) -> None:
    slow = {"on": False}

    def slow_chart(event: EventRecord) -> None:  # a charting app's callback, slow once
        if slow["on"] and event.kind == "button":
            slow["on"] = False
            estim_clock.sleep(0.4)

    with Journal(tmp_path / "estim.db") as journal, connect(estim_url) as device:
        session = device.start(
            make_plan(60, {1: 5.0}, ramp=2.0), journal=journal, on_event=slow_chart
        )
        estim_clock.advance(10)
        slow["on"] = True
        estim_unit.press(Button.MARK)  # the clinician marks a moment: the callback is slow
        estim_clock.settle()
        session.request_stop(StopReason.HOST_SHUTDOWN, "SIGTERM")  # a signal arrives
        session.stop()  # the operator presses stop: output off now
        on_after_stop = estim_unit.output_on
        record = session.wait(timeout=10)
        assert record.outcome == "stopped"
        assert not on_after_stop
