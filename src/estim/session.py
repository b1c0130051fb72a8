"""A session: what both runners' session handles share, and the threaded one.

``judge`` checks a start's arguments (the session's own copy of the plan, its
periods) before anything is claimed or written; ``new_policy`` makes its policy and
commits "start requested" to the journal, the one write that blocks (no record, no
START). What the session then does is decided by ``estim.policy`` on the runner's
loop; a handle only asks it things (``set_amplitude``, ``stop``), reads its state
and waits for its record. Journal writes and ``on_event`` callbacks run on threads
of their own (``estim.background``): a slow disk or a slow callback never delays a
heartbeat, and an exception in a callback still stops output.

``SessionHandle`` is what the threaded ``Session`` (here) and the asyncio
``AsyncSession`` (``estim.aio``) share; each asks its runner through the steps of
``estim.steps`` (``runner._drive``), so neither reaches into the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import estim.shutdown as shutdown
import estim.steps as steps
from estim.background import JournalWriter, Notifier
from estim.bounds import checked, wait_timeout
from estim.errors import JournalError, OutputLimitError
from estim.info import UnitInfo, UnitStatus
from estim.journal import Journal
from estim.limits import Limits
from estim.plan import SessionPlan
from estim.policy import HEARTBEAT_S, SessionPolicy
from estim.protocol import StopReason
from estim.record import EventRecord, SessionRecord, UnitRecord
from estim.safety import exact, finite
from estim.session_state import SessionState
from estim.steps import Steps

if TYPE_CHECKING:
    from estim.clock import Clock
    from estim.core import HostCore

T = TypeVar("T")

EventCallback = Callable[[EventRecord], None]

#: the shortest heartbeat period a caller may ask for (10 a second is the default)
HEARTBEAT_MIN_S = 0.02

#: a change to make on the runner's loop: ``act(core, now)``
CoreAct = Callable[["HostCore", float], None]


class Runner(Protocol):
    """What a session handle needs of the runner it belongs to."""

    url: str
    clock: Clock
    info: UnitInfo
    limits: Limits

    def _post(self, act: CoreAct, *, urgent: bool = True) -> None: ...


class ThreadedRunner(Runner, Protocol):
    """What the threaded session needs of ``estim.device.Device`` (without importing it)."""

    def _drive(self, steps: Steps[T]) -> T: ...


def heartbeat_period(plan: SessionPlan, asked: float | None) -> float:
    """PROTOCOL.md 9: a heartbeat at least every watchdog / 4; 100 ms unless the
    watchdog is shorter. A period asked for must keep to that too."""
    quarter = plan.watchdog / 4
    if asked is None:
        return min(HEARTBEAT_S, quarter)
    if not (
        isinstance(asked, int | float) and finite(asked) and HEARTBEAT_MIN_S <= asked <= quarter
    ):
        given = exact(asked) if isinstance(asked, int | float) and finite(asked) else repr(asked)
        raise OutputLimitError(
            f"heartbeat {given} s must be at least {HEARTBEAT_MIN_S:g} s and at most a quarter "
            f"of the {plan.watchdog:g} s watchdog ({quarter:g} s; PROTOCOL.md 9)"
        )
    return float(asked)


def own_copy(plan: SessionPlan) -> SessionPlan:
    """A copy of ``plan`` that shares nothing with it, its channels a tuple."""
    channels = tuple(c.model_copy() for c in tuple(plan.channels))
    return plan.model_copy(update={"channels": channels})


@dataclass(frozen=True)
class Judged:
    """A start's arguments once checked: the session's own plan and its periods."""

    plan: SessionPlan
    heartbeat: float
    status_every: float


def judge(
    limits: Limits, plan: SessionPlan, *, heartbeat: float | None, status_every: float
) -> Judged:
    """Check a start's arguments, before the unit is claimed or anything written.
    Raises ``PlanError`` (``DwellLimitError``, ``OutputLimitError``) or ``OptionError``.

    The session runs its own copy of ``plan``, taken before it is judged: whatever
    the caller later does to the object it holds, what the limits judged is what
    the unit runs and what the record says (SAFETY.md 9)."""
    plan = own_copy(plan)
    limits.check_plan(plan)
    return Judged(
        plan=plan,
        heartbeat=heartbeat_period(plan, heartbeat),
        status_every=checked("status_every", status_every),
    )


def new_policy(
    runner: Runner,
    core: HostCore,
    judged: Judged,
    journal: Journal,
    now: float,
    *,
    above: int = 0,
) -> SessionPolicy:
    """Make a judged session's policy and commit "start requested" to the journal:
    the one write that blocks, on purpose (no record, no START). Raises before
    anything is sent. The session id is above ``above`` (PROTOCOL.md 10: increasing)."""
    plan = judged.plan
    if core.lost is not None:
        raise core.lost
    session_id = journal.new_session_id(above)
    unit = runner.info.as_dict()
    dumped = plan.model_dump(mode="json")
    policy = SessionPolicy(
        plan=plan,
        limits=runner.limits,
        session_id=session_id,
        link=core,
        now=now,
        created_utc=datetime.now(timezone.utc),
        start_requested={"plan": dumped, "unit": unit, "port": runner.url},
        heartbeat=judged.heartbeat,
        status_every=judged.status_every,
    )
    journal.begin(
        session_id,
        plan=dumped,
        unit=unit,
        port=runner.url,
        planned_ms=round(plan.dwell * 1000),
        utc=policy.events[0].utc,
    )
    return policy


class SessionHandle:
    """A session's policy, journal writer, callback thread and record."""

    def __init__(
        self,
        runner: Runner,
        policy: SessionPolicy,
        journal: Journal,
        *,
        owns_journal: bool,
        on_event: EventCallback | None,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        self.plan = policy.plan
        self.clock = runner.clock
        self.session_id = policy.session_id
        self.id = policy.id
        self.journal = journal
        self._policy = policy
        self._owns_journal = owns_journal
        self._closed = False
        self._unit = UnitRecord(
            model=runner.info.model,
            serial_number=runner.info.serial_number,
            firmware=runner.info.firmware,
            simulated=runner.info.simulated,
            port=runner.url,
        )
        first = policy.events[0]  # "start requested", committed by new_policy
        self._writer = JournalWriter(
            journal,
            self.id,
            self.clock,
            begin={**first.data, "planned_ms": round(self.plan.dwell * 1000), "utc": first.utc},
            first=first,
            on_durable=lambda n: runner._post(
                lambda core, now: core.journal_durable(policy, n), urgent=False
            ),
            on_failed=lambda error: runner._post(
                lambda core, now: core.journal_failed(policy, error, now)
            ),
            on_done=on_settled,
        )
        self._notifier = (
            Notifier(
                on_event,
                self.id,
                self.clock,
                on_failed=lambda error: runner._post(
                    lambda core, now: core.callback_failed(policy, error, now)
                ),
                on_done=on_settled,
            )
            if on_event is not None
            else None
        )
        shutdown.track_session(self)

    @property
    def state(self) -> SessionState:
        return self._policy.state

    @property
    def remaining(self) -> float:
        """Seconds until the dwell ends (host's timer), 0 once ended."""
        return self._policy.remaining(self.clock.now())

    @property
    def elapsed(self) -> float:
        """Seconds of the dwell gone by (host's timer)."""
        if self._policy.host_deadline is None:
            return 0.0
        return self.plan.dwell - self.remaining

    @property
    def last_status(self) -> UnitStatus | None:
        """The unit's last STATUS (polled about once a second)."""
        return self._policy.last_status

    def record(self) -> SessionRecord:
        """The record as it stands (the journal's, once the session is over)."""
        p = self._policy
        return SessionRecord.build(
            session_id=self.id,
            unit=self._unit,
            plan=self.plan,
            created_utc=p.events[0].utc,
            events=list(p.events),
            outcome=p.outcome,
            stop_reason=p.stop_reason,
            ended_by=p.ended_by,
            delivered_ms=p.delivered_ms,
            journal_error=self._writer.error or p.journal_error,
        )

    def _background_done(self) -> list[Any]:
        """The signals set once every record is written and every callback made."""
        notifier = [] if self._notifier is None else [self._notifier.done]
        return [self._writer.done, *notifier]

    # -- from the runner, on its loop (never blocks) -----------------------------------------

    def _recorded(self, record: EventRecord, state: str) -> None:
        if record.n > 0:  # event 0 was committed before START
            self._writer.submit(record, state)
        if self._notifier is not None:
            self._notifier.submit(record)

    def _ended(self) -> None:
        p = self._policy
        started = next((e.utc for e in p.events if e.kind == "output_started"), None)
        self._writer.finish(
            {
                "outcome": p.outcome,
                "stop_reason": p.stop_reason,
                "ended_by": p.ended_by,
                "delivered_ms": p.delivered_ms,
                "started_utc": started,
                "ended_utc": p.events[-1].utc,
            }
        )
        if self._notifier is not None:
            self._notifier.finish()

    def _finish_at_exit(self, limit: float) -> None:
        """The program is ending (``estim.shutdown``): let every record reach the
        journal or its sidecar, and every callback be made, within ``limit``."""
        end = self.clock.now() + limit
        for signal in self._background_done():
            signal.wait(max(0.0, end - self.clock.now()))
        if all(signal.is_set() for signal in self._background_done()):
            self._close_journal()

    def _close_journal(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_journal:
            try:
                self.journal.close()
            except JournalError:
                pass


class Session(SessionHandle):
    """A running session. Create with ``Device.start(plan)``."""

    def __init__(
        self, device: ThreadedRunner, policy: SessionPolicy, journal: Journal, **kw: Any
    ) -> None:
        super().__init__(device, policy, journal, **kw)
        self.device = device
        self._ended_signal = self.clock.signal()

    @property
    def events(self) -> list[EventRecord]:
        """The session's records so far (``on_event`` gets each as it happens)."""
        return list(self._policy.events)

    def set_amplitude(self, channel: int, ma: float, *, timeout: float = 2.0) -> None:
        """Change a channel's amplitude; the unit slews to it at the session's rate.
        Checked by the same limits as the plan (``OutputLimitError`` before anything
        is sent); ``DeviceError`` if the unit refuses; ``LinkTimeout`` if it did not
        answer (it may have taken the change: the record says so)."""
        timeout = checked("timeout", timeout)
        self.device._drive(steps.set_amplitude(self._policy, channel, ma, timeout))

    def stop(self, reason: StopReason = StopReason.OPERATOR, detail: str = "") -> None:
        """Output off now, from this thread (STOP jumps every queue); returns once the
        unit acknowledged it (or the link was given up). The session then ends and
        records ``reason``, or the reason of a stop already on its way. Safe from any
        thread; idempotent."""
        self.device._drive(steps.stop_session(self._policy, reason, detail))

    def request_stop(self, reason: StopReason = StopReason.OPERATOR, detail: str = "") -> None:
        """Ask for a stop without blocking (for signal handlers): the I/O thread
        sends STOP on its next turn."""
        self.device._post(steps.posted_stop(self._policy, reason, detail))

    def wait(self, timeout: float | None = None) -> SessionRecord:
        """Block until the session has ended and its record is in the journal (or in
        its sidecar file); return the record. Raises TimeoutError if ``timeout``
        seconds pass first."""
        timeout = wait_timeout(timeout)
        end = None if timeout is None else self.clock.now() + timeout
        for signal in (self._ended_signal, *self._background_done()):
            left = None if end is None else max(0.0, end - self.clock.now())
            if not signal.wait(left):
                raise TimeoutError(f"session {self.id} is still {self.state} after {timeout} s")
        self._close_journal()
        return self.record()

    def _ended(self) -> None:
        super()._ended()
        self._ended_signal.set()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if not self.state.is_end:
                self.stop(StopReason.HOST_SHUTDOWN, "the program left the session's with block")
        finally:
            self.wait()  # (a unit that would not stop still ends its record: faulted)

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.state} on {self.device.url}>"


__all__ = ["Session", "SessionHandle"]
