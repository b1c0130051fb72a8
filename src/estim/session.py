"""A session: the plan run on a unit, its dwell enforced, its record kept.

``Device.start(plan)`` checks the plan against the unit (nothing is sent if it
would be refused), commits "start requested" to the journal (if that fails, the
session does not start), configures the channels, sends START, and returns at
once. The session then runs in its own loop, on its own thread:

- it sends a HEARTBEAT every 100 ms itself, never from a free-running thread, so
  if the loop hangs the heartbeats stop and the unit's watchdog turns output off;
- it stops the unit at the dwell (its own timer, started before START was sent,
  so it can only end early); the unit's own deadline is the backstop, and the
  record says which ended it; delivered time is the unit's own figure;
- it journals every event as it happens, one transaction each;
- it ends with output off and a reason on every failure: a unit fault, link loss,
  a journal write failure, an exception in the ``on_event`` callback or in
  itself, ``stop()``, a signal (``run_session`` and the CLI), or the end of a
  ``with`` block.

The state machine is ``estim.session_state``; time comes from the device's clock,
so a 10-minute session runs in milliseconds on a ``ManualClock``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from estim.clock import Signal
from estim.device import Device
from estim.errors import (
    DeviceError,
    EstimError,
    JournalError,
    LinkError,
    LinkLost,
    OutputLimitError,
)
from estim.info import UnitStatus
from estim.journal import Journal, format_id, utc_now
from estim.limits import Limits
from estim.link import EventGap, LinkDown, Notification
from estim.plan import SessionPlan
from estim.protocol import (
    AmplitudeReached,
    Booted,
    ButtonPressed,
    Completed,
    ErrorCode,
    Event,
    Fault,
    FaultRaised,
    Message,
    Nack,
    OutputStarted,
    RampDone,
    RampDownStarted,
    State,
    Stopped,
    StopReason,
)
from estim.record import EventRecord, SessionRecord, UnitRecord
from estim.session_state import SessionState, StateMachine

log = logging.getLogger("estim.session")

HEARTBEAT_S = 0.1
STATUS_EVERY_S = 1.0
#: how long to wait for the unit's STOPPED/COMPLETED event after a STOP is acknowledged
END_EVENT_WAIT_S = 0.25

EventCallback = Callable[[EventRecord], None]

_OUTCOME_OF_STOP = {
    StopReason.OPERATOR: "stopped",
    StopReason.HOST_SHUTDOWN: "stopped",
    StopReason.HOST_ERROR: "aborted",
    StopReason.DWELL_ELAPSED: "completed",
}


class _CallbackFailed(Exception):
    pass


@dataclass
class _StopRequest:
    reason: StopReason
    detail: str
    sent: bool


@dataclass(frozen=True)
class _HeartbeatRefused:
    nack: Nack


@dataclass
class _Command:
    channel: int
    ma: float
    done: Signal
    error: BaseException | None = None


class Session:
    """A running session. Create with ``Device.start(plan)``."""

    def __init__(
        self,
        device: Device,
        plan: SessionPlan,
        journal: Journal,
        session_id: int,
        *,
        owns_journal: bool,
        on_event: EventCallback | None,
        heartbeat: float,
        status_every: float = STATUS_EVERY_S,
    ) -> None:
        self.device = device
        self.plan = plan
        self.clock = device.clock
        self.session_id = session_id
        self.id = format_id(session_id)
        self.journal = journal
        self.heartbeat_period = heartbeat
        self.status_every = status_every
        #: silence from the unit after which the link is declared lost: as long as
        #: one request and its retries would wait, plus one heartbeat period
        self.liveness = device.link.response_timeout * (device.link.retries + 1) + heartbeat
        #: the last STATUS the loop read from the unit (about once a second)
        self.last_status: UnitStatus | None = None
        self._owns_journal = owns_journal
        self._on_event = on_event
        self._machine = StateMachine()
        self._events: list[EventRecord] = []
        self._lock = threading.Lock()
        self._wake = self.clock.signal()
        self._done = self.clock.signal()
        self._inbox: deque[Notification | _HeartbeatRefused] = deque()
        self._commands: deque[_Command] = deque()
        self._stop: _StopRequest | None = None
        self._t0 = self.clock.now()
        self._created = utc_now()
        self._host_deadline: float | None = None
        self._outcome: str | None = None
        self._stop_reason: str | None = None
        self._ended_by: str | None = None
        self._delivered_ms: int | None = None
        self._journal_error: str | None = None
        self._journal_ok = True
        self._callback_failed = False
        self._pending_fault: str | None = None
        self._unsubscribe: Callable[[], None] = lambda: None
        self._thread: threading.Thread | None = None
        self._unit = UnitRecord(
            model=device.info.model,
            serial_number=device.info.serial_number,
            firmware=device.info.firmware,
            simulated=device.info.simulated,
            port=device.url,
        )

    # -- starting -------------------------------------------------------------------------------

    @classmethod
    def begin(
        cls,
        device: Device,
        plan: SessionPlan,
        *,
        on_event: EventCallback | None = None,
        journal: Journal | None = None,
        heartbeat: float = HEARTBEAT_S,
        status_every: float = STATUS_EVERY_S,
    ) -> Session:
        Limits(device.info).check_plan(plan)
        if device.link.lost is not None:
            raise device.link.lost
        owns = journal is None
        journal = journal if journal is not None else Journal()
        try:
            session_id = journal.new_session_id()
            journal.begin(
                session_id,
                plan=plan.model_dump(mode="json"),
                unit={**device.info.as_dict()},
                port=device.url,
                planned_ms=round(plan.dwell * 1000),
            )
        except BaseException:
            if owns:
                journal.close()
            raise
        session = cls(
            device,
            plan,
            journal,
            session_id,
            owns_journal=owns,
            on_event=on_event,
            heartbeat=heartbeat,
            status_every=status_every,
        )
        session._start()
        device._sessions.add(session)
        session._thread = device.clock.start_thread(
            session._run, name=f"estim-session {session.id}"
        )
        return session

    def _start(self) -> None:
        self._unsubscribe = self.device.subscribe(self._notify)
        try:
            for channel in self.plan.channels:
                self.device.configure(channel)
            self._host_deadline = (
                self.clock.now() + self.plan.dwell
            )  # before START: can only end early
            self.device.start_output(
                session_id=self.session_id,
                dwell_s=self.plan.dwell,
                ramp_s=self.plan.ramp,
                watchdog_s=self.plan.watchdog,
                channels=[c.channel for c in self.plan.channels],
            )
        except DeviceError as err:
            self._fail_to_start("start_refused", str(err))
            raise
        except LinkError as err:
            self._fail_to_start("link_lost", str(err))
            raise
        except BaseException as err:
            self._fail_to_start("aborted", f"internal error: {err!r}", stop=True)
            raise
        self._machine.fire("start_accepted")

    def _fail_to_start(self, event: str, reason: str, *, stop: bool = False) -> None:
        if stop:
            with contextlib.suppress(LinkError):
                self.device.stop(StopReason.HOST_ERROR, give_up_after=self.plan.watchdog)
        self._machine.fire(event)
        self._finish(reason, ended_by=None)
        self._unsubscribe()
        if self._owns_journal:
            self.journal.close()
        self._done.set()

    # -- the public surface -------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._machine.state

    @property
    def remaining(self) -> float:
        """Seconds until the dwell ends (host's timer), 0 once ended."""
        if self._host_deadline is None or self.state.is_end:
            return 0.0
        return max(0.0, self._host_deadline - self.clock.now())

    @property
    def elapsed(self) -> float:
        """Seconds of the dwell gone by (host's timer)."""
        return self.plan.dwell - self.remaining if self._host_deadline is not None else 0.0

    @property
    def events(self) -> list[EventRecord]:
        with self._lock:
            return list(self._events)

    def set_amplitude(self, channel: int, ma: float, *, timeout: float = 2.0) -> None:
        """Change a channel's amplitude; the unit slews to it at the session's rate.
        Raises DeviceError if the unit refuses, OutputLimitError before sending."""
        if self.state.is_end:
            raise EstimError(f"session {self.id} has ended ({self.state})")
        if channel not in {c.channel for c in self.plan.channels}:
            raise OutputLimitError(f"channel {channel} is not in this session")
        command = _Command(channel, ma, self.clock.signal())
        with self._lock:
            self._commands.append(command)
        self._wake.set()
        if not command.done.wait(timeout):
            raise EstimError(
                f"session {self.id} did not carry out the amplitude change in {timeout:g} s"
            )
        if command.error is not None:
            raise command.error

    def stop(self, reason: StopReason = StopReason.OPERATOR, detail: str = "") -> None:
        """Output off now, from this thread (STOP jumps every queue); the session
        then ends and records ``reason`` (or the reason of a stop already asked for,
        which this one carries out at once). Safe from any thread; idempotent."""
        request = self._request(reason, detail)
        if request is None:
            with self._lock:
                request = self._stop
            if request is None or request.sent or self.state.is_end:
                return
        try:
            self.device.stop(reason, give_up_after=self.plan.watchdog)
            request.sent = True
        except LinkError:
            pass  # the loop sees the link go down; the unit's watchdog acts
        self._wake.set()

    def request_stop(self, reason: StopReason = StopReason.OPERATOR, detail: str = "") -> None:
        """Ask the loop to stop; never blocks (for signal handlers)."""
        if self._request(reason, detail) is not None:
            self._wake.set()

    def _request(self, reason: StopReason, detail: str) -> _StopRequest | None:
        with self._lock:
            if self.state.is_end or self._stop is not None:
                return None
            self._stop = _StopRequest(
                reason, detail or reason.name.lower().replace("_", " "), sent=False
            )
            return self._stop

    def wait(self, timeout: float | None = None) -> SessionRecord:
        """Block until the session has ended; return its record.
        Raises TimeoutError if ``timeout`` seconds pass first."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"session {self.id} is still {self.state} after {timeout} s")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        return self.record()

    def record(self) -> SessionRecord:
        return SessionRecord.build(
            session_id=self.id,
            unit=self._unit,
            plan=self.plan,
            created_utc=self._created,
            events=self.events,
            outcome=self._outcome,
            stop_reason=self._stop_reason,
            ended_by=self._ended_by,
            delivered_ms=self._delivered_ms,
            journal_error=self._journal_error,
        )

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.state.is_end:
            self.stop(StopReason.HOST_SHUTDOWN, "the program left the session's with block")
        self.wait()

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.state} on {self.device.url}>"

    # -- the loop ---------------------------------------------------------------------------------

    def _notify(self, notification: Notification) -> None:
        """On the reader thread: queue it for the loop (never blocks)."""
        if isinstance(notification, Event) and notification.session_id not in (0, self.session_id):
            return
        with self._lock:
            self._inbox.append(notification)
        self._wake.set()

    def _run(self) -> None:
        try:
            self._loop()
        except LinkLost as err:
            self._end("link_lost", str(err), ended_by=None)
        except JournalError as err:
            self._journal_ok = False
            self._journal_error = str(err)
            self._halt(StopReason.HOST_ERROR, f"journal: {err}")
        except _CallbackFailed as err:
            self._halt(StopReason.HOST_ERROR, f"on_event callback raised: {err}")
        except BaseException as err:  # a bug must still end with output off
            log.exception("session loop failed")
            self._halt(StopReason.HOST_ERROR, f"internal error: {err!r}")
        finally:
            self._unsubscribe()
            if self._owns_journal:
                self.journal.close()
            self.device._sessions.discard(self)
            self._done.set()

    def _loop(self) -> None:
        assert self._host_deadline is not None
        self._record("start_accepted", {"dwell_s": self.plan.dwell, "ramp_s": self.plan.ramp})
        next_beat = self.clock.now() + self.heartbeat_period
        next_status = self.clock.now()
        while not self.state.is_end:
            wake_at = min(next_beat, next_status, self._host_deadline)
            self._wake.wait(max(0.0, wake_at - self.clock.now()))
            self._wake.clear()
            self._drain()
            if self.state.is_end:
                return
            if self._stop is not None:
                self._honour_stop()
                return
            self._run_commands()
            now = self.clock.now()
            if now >= self._host_deadline:
                self._stop = _StopRequest(
                    StopReason.DWELL_ELAPSED, "the dwell elapsed (host timer)", sent=False
                )
                self._honour_stop()
                return
            if now >= next_beat:
                next_beat = now + self.heartbeat_period
                self._heartbeat()
            if now >= next_status and not self.state.is_end:
                next_status = now + self.status_every
                self.last_status = self.device.status()

    def _heartbeat(self) -> None:
        """Beat without waiting for the ACK; a NACK comes back through the inbox. The
        unit is alive as long as something valid arrives: after ``liveness`` seconds of
        silence (three unanswered beats) the link is lost."""
        link = self.device.link
        silent = self.clock.now() - (link.last_rx if link.last_rx is not None else self._t0)
        if silent > self.liveness:  # (failing the link sends a last, blind STOP)
            error = LinkLost(
                f"the unit on {self.device.url} has been silent for {silent * 1000:.0f} ms "
                "(heartbeats unanswered); its watchdog turns output off"
            )
            link.fail(error)
            raise error
        self.device.send_heartbeat(self.session_id, self._heartbeat_answer)

    def _heartbeat_answer(self, answer: Message) -> None:
        """On the reader thread: only a refusal needs the loop."""
        if isinstance(answer, Nack):
            with self._lock:
                self._inbox.append(_HeartbeatRefused(answer))
            self._wake.set()

    def _heartbeat_refused(self, nack: Nack) -> None:
        self._drain()  # the event that explains it arrived before the answer
        if self.state.is_end:
            return
        if nack.error == ErrorCode.FAULT_LATCHED:
            self._end("fault", self._pending_fault or "the unit latched a fault", ended_by=None)
            return
        status = self.device.status()
        self.last_status = status
        if status.state == State.FAULT:
            self._end("fault", "the unit latched a fault (its event was lost)", ended_by=None)
        else:
            self._end(
                "stopped", "the session ended at the unit (its event was lost)", ended_by=None
            )

    def _run_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                command = self._commands.popleft()
            try:
                self._record("amplitude_set", {"channel": command.channel, "ma": command.ma})
                self.device.set_amplitude(command.channel, command.ma, session_id=self.session_id)
            except (DeviceError, OutputLimitError) as err:
                command.error = err
                self._record(
                    "amplitude_refused",
                    {"channel": command.channel, "ma": command.ma, "error": str(err)},
                )
            except BaseException as err:
                command.error = err
                raise
            finally:
                command.done.set()

    def _honour_stop(self) -> None:
        """Send STOP unless the caller already did; then end with the unit's figures."""
        request = self._stop
        assert request is not None
        if not request.sent:  # output off first, the record after
            self.device.stop(request.reason, give_up_after=self.plan.watchdog)
            request.sent = True
        self._record("stop_requested", {"reason": request.reason.name, "detail": request.detail})
        self._await_end_event()
        if not self.state.is_end:
            outcome = _OUTCOME_OF_STOP.get(request.reason, "stopped")
            self._end(outcome, request.detail, ended_by="host" if outcome == "completed" else None)

    def _await_end_event(self) -> None:
        deadline = self.clock.now() + END_EVENT_WAIT_S
        while not self.state.is_end and self._delivered_ms is None:
            left = deadline - self.clock.now()
            if left <= 0:
                return
            self._wake.wait(left)
            self._wake.clear()
            self._drain()

    def _halt(self, reason: StopReason, detail: str) -> None:
        """The loop failed: output off first, then whatever record can still be made."""
        with self._lock:
            self._stop = _StopRequest(reason, detail, sent=True)  # the unit's STOPPED is ours
        try:
            self.device.stop(reason, give_up_after=self.plan.watchdog)
        except LinkError as err:
            detail = f"{detail}; and the link failed: {err}"
        if not self.state.is_end:
            with contextlib.suppress(JournalError, _CallbackFailed):
                self._await_end_event()
        if not self.state.is_end:
            self._end("aborted", detail, ended_by=None)

    # -- events from the unit ----------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._inbox:
                    return
                item = self._inbox.popleft()
            self._handle(item)

    def _handle(self, item: Notification | _HeartbeatRefused) -> None:
        if isinstance(item, _HeartbeatRefused):
            self._heartbeat_refused(item.nack)
            return
        if isinstance(item, LinkDown):
            if not self.state.is_end:
                self._end("link_lost", str(item.error), ended_by=None)
            return
        if isinstance(item, EventGap):
            self._record("events_missed", {"expected": item.expected, "received": item.received})
            return
        ms = item.time_ms
        if isinstance(item, OutputStarted):
            self._record(
                "output_started",
                {"dwell_ms": item.dwell_ms, "channel_mask": item.channel_mask},
                unit_ms=ms,
            )
        elif isinstance(item, RampDone):
            if self._machine.can("ramp_done"):
                self._machine.fire("ramp_done")
            self._record("ramp_done", unit_ms=ms)
        elif isinstance(item, RampDownStarted):
            if self._machine.can("ramp_down"):
                self._machine.fire("ramp_down")
            self._record("ramp_down", {"remaining_ms": item.remaining_ms}, unit_ms=ms)
        elif isinstance(item, AmplitudeReached):
            self._record(
                "amplitude_reached",
                {"channel": item.channel, "ma": item.amplitude_ua / 1000},
                unit_ms=ms,
            )
        elif isinstance(item, Completed):
            self._delivered_ms = item.delivered_ms
            self._record("unit_completed", {"delivered_ms": item.delivered_ms}, unit_ms=ms)
            if not self.state.is_end:
                self._end("completed", "the dwell elapsed (unit deadline)", ended_by="unit")
        elif isinstance(item, FaultRaised):
            name = (
                Fault(item.fault).name
                if item.fault in Fault._value2member_map_
                else f"UNKNOWN_{item.fault}"
            )
            self._pending_fault = f"unit fault {name}" + (
                f" on channel {item.channel}" if item.channel else ""
            )
            self._record(
                "fault", {"fault": item.fault, "name": name, "channel": item.channel}, unit_ms=ms
            )
        elif isinstance(item, Stopped):
            self._delivered_ms = item.delivered_ms
            reason = (
                StopReason(item.reason).name
                if item.reason in StopReason._value2member_map_
                else str(item.reason)
            )
            self._record(
                "unit_stopped", {"reason": reason, "delivered_ms": item.delivered_ms}, unit_ms=ms
            )
            if self.state.is_end:
                return
            if item.reason == StopReason.FAULT:
                self._end("fault", self._pending_fault or "the unit latched a fault", ended_by=None)
            elif self._stop is None:
                self._end("stopped", f"stopped at the unit (reason {reason})", ended_by=None)
        elif isinstance(item, ButtonPressed):
            self._record("button", {"button": item.button}, unit_ms=ms)
        elif isinstance(item, Booted):
            self._record("unit_restarted", {"cause": item.cause}, unit_ms=ms)
            if not self.state.is_end:
                self._pending_fault = "the unit restarted (power cycle or reset); output is off"
                self._end("fault", self._pending_fault, ended_by=None)

    # -- recording ---------------------------------------------------------------------------------

    def _record(
        self, kind: str, data: dict[str, Any] | None = None, *, unit_ms: int | None = None
    ) -> None:
        with self._lock:
            record = EventRecord(
                n=len(self._events) + 1,
                utc=utc_now(),
                t=round(self.clock.now() - self._t0, 6),
                unit_ms=unit_ms,
                kind=kind,
                data=data or {},
            )
            self._events.append(record)
        if self._journal_ok:
            try:
                self.journal.append(
                    self.id,
                    kind,
                    record.data,
                    t=record.t,
                    unit_ms=unit_ms,
                    state=self.state.value,
                    utc=record.utc,
                )
            except JournalError as err:
                self._journal_ok = False
                self._journal_error = str(err)
                raise
        if self._on_event is not None and not self._callback_failed:
            try:
                self._on_event(record)
            except Exception as err:
                self._callback_failed = True
                raise _CallbackFailed(repr(err)) from err

    def _end(self, event: str, reason: str, *, ended_by: str | None) -> None:
        self._machine.fire(event)
        self._finish(reason, ended_by=ended_by)

    def _finish(self, reason: str, *, ended_by: str | None) -> None:
        self._outcome = self.state.value
        self._stop_reason = reason
        self._ended_by = ended_by
        data = {
            "outcome": self._outcome,
            "reason": reason,
            "ended_by": ended_by,
            "delivered_ms": self._delivered_ms,
        }
        # the end is recorded in memory even if the journal or the callback fails now
        with contextlib.suppress(JournalError, _CallbackFailed):
            self._record("ended", data)
        if self._journal_ok:
            started = next((e.utc for e in self.events if e.kind == "output_started"), None)
            try:
                self.journal.finish(
                    self.id,
                    outcome=self._outcome,
                    stop_reason=reason,
                    ended_by=ended_by,
                    delivered_ms=self._delivered_ms,
                    started_utc=started,
                    ended_utc=utc_now(),
                )
            except JournalError as err:
                self._journal_ok = False
                self._journal_error = str(err)


def run_session(
    url: str,
    plan: SessionPlan,
    *,
    on_event: EventCallback | None = None,
    journal: Journal | None = None,
    handle_signals: bool = True,
    **connect_options: Any,
) -> SessionRecord:
    """Connect, run ``plan`` to its end, and return the record: the blocking API
    for scripts. Ctrl-C, SIGTERM and SIGHUP stop output and end the session
    (when called from the main thread)."""
    from estim.device import connect
    from estim.signals import stop_on_signals

    with connect(url, **connect_options) as device:
        session = device.start(plan, on_event=on_event, journal=journal)
        with stop_on_signals(session, enabled=handle_signals):
            return session.wait()
