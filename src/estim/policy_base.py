"""What every part of the session policy shares (``estim.policy``): its state, how
it sends, records and wakes callers, and how a session stops and ends. The parts
that decide (the start sequence, the live loop, the reading of the unit's reports)
build on this; ``SessionPolicy`` joins them.

The policy as a whole, pure: everything a running session decides, from the
answers, events, operator requests and the time it is given.

It owns the heartbeat schedule, the host's dwell timer, the reading of the unit's
events, the outcome and the truth of the record. It sends through a ``Link`` (the
core's view of the connection: ``send``, ``cancel``, ``last_rx``), returns nothing
and never blocks: what it wants done it leaves in ``records`` (to journal and to
notify) and ``resolved`` (callers to wake), which the core drains. No clock, no
thread, no lock, no journal: a runner feeds it and carries out the rest.

Rules (SAFETY.md 1-5, 7; PROTOCOL.md 9):

- a HEARTBEAT every ``heartbeat`` seconds from this loop, never delayed by a
  request in flight, and another at once if one is unanswered after
  ``HEARTBEAT_ANSWER_S`` (so a lost frame costs 50 ms, not the watchdog);
- the host's dwell timer starts before START is sent, so it can only end early;
  the unit's own deadline is the backstop, and the record says which ended it;
- a stop (operator, signal, dwell, failure) sends STOP at once and ends with the
  unit's own delivered time;
- before calling the link lost it listens: when the unit has been silent for a
  watchdog period (so its watchdog has acted if it heard nothing either), the host
  stops heartbeating, sends STOP, and asks for STATUS for ``LINK_RECOVERY_S``; the
  record then says what the unit says (its watchdog, our STOP) or, if it never
  answers, that the link was lost;
- a host that was itself frozen (its own activations far apart) is not a silent
  unit: it listens again from now, and the record says it stalled;
- a journal event that is not durable within ``JOURNAL_DURABLE_S``, a journal
  failure, or an exception in a callback stops output at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from estim.errors import DeviceError, DeviceFault, EstimError
from estim.info import UnitStatus
from estim.limits import Limits
from estim.pending import Pending, StartAsked, StopAsked
from estim.plan import SessionPlan
from estim.protocol import Fault, Heartbeat, Message, Stop, StopReason
from estim.protocol.host import Retries
from estim.record import EventRecord
from estim.recorder import Recorder
from estim.session_state import Ended, Host, SessionState, SessionStates, StopSent

if TYPE_CHECKING:
    from datetime import datetime

HEARTBEAT_S = 0.1
#: a heartbeat still unanswered after this long is followed by another at once
HEARTBEAT_ANSWER_S = 0.05
STATUS_EVERY_S = 1.0
#: how long to wait for the unit's STOPPED/COMPLETED once a STOP is acknowledged
END_EVENT_WAIT_S = 0.25
#: SAFETY.md 7: a journal event not durable within this long stops output
JOURNAL_DURABLE_S = 1.0
#: after the unit has been silent for a watchdog period: how long to listen for it
LINK_RECOVERY_S = 3.0
RECOVERY_POLL_S = 0.25
#: CONFIGURE_CHANNEL requests (each with its resends) before a start is refused: on a
#: noisy line three lost attempts are not rare, and nothing can be on while configuring.
#: START is never asked again: its attempts must end within the watchdog.
CONFIGURE_REQUESTS = 3
#: how far the unit's clock and the host's may drift apart over a session (0.1 %:
#: crystals are within 100 ppm, and NTP slews a host's monotonic clock by up to 500)
CLOCK_TOLERANCE = 0.001
#: and the granularity of the unit's reports (whole milliseconds, a 1 ms tick)
REPORT_TICK_MS = 2

_OUTCOME_OF_STOP = {
    StopReason.OPERATOR: "stopped",
    StopReason.HOST_SHUTDOWN: "stopped",
    StopReason.HOST_ERROR: "aborted",
    StopReason.DWELL_ELAPSED: "completed",
}


class Link(Protocol):
    """What the policy may do with the connection."""

    @property
    def last_rx(self) -> float | None: ...

    def send(self, message: Message, now: float, owner: Any, *, retries: Retries = None) -> int: ...

    def cancel(self, seq: int) -> None: ...


@dataclass
class StopRequest:
    reason: StopReason
    detail: str
    #: when the unit acknowledged it (then the end event is awaited a while)
    acked_at: float | None = None
    #: the session's end event, when not the reason's (a fault the host stopped for)
    outcome: str | None = None


def fault_name(code: int) -> str:
    return Fault(code).name if code in Fault._value2member_map_ else f"UNKNOWN_{code}"


class PolicyBase:
    """A session's state and what every part of its policy does with it."""

    def __init__(
        self,
        *,
        plan: SessionPlan,
        limits: Limits,
        session_id: int,
        link: Link,
        now: float,
        created_utc: datetime,
        start_requested: dict[str, Any],
        heartbeat: float = HEARTBEAT_S,
        status_every: float = STATUS_EVERY_S,
    ) -> None:
        self.plan = plan
        self.limits = limits
        self.session_id = session_id
        self.id = f"{session_id:08x}"
        self.link = link
        self.heartbeat = heartbeat
        self.status_every = status_every
        #: the session's two roles (what the host does, what the unit reports): one machine
        self.states = SessionStates()
        #: the session's records (``estim.recorder``): made here, built and stamped there
        self.recorder = Recorder(created_utc, now)
        #: callers to wake: (token, error or None)
        self.resolved: list[tuple[object, EstimError | None]] = []
        self.outcome: str | None = None
        self.stop_reason: str | None = None
        self.ended_by: str | None = None
        self.delivered_ms: int | None = None
        self.journal_error: str | None = None
        self.last_status: UnitStatus | None = None
        #: the session ended because the unit could not be heard at all
        self.unit_unreachable = False
        self.host_deadline: float | None = None
        #: host time at which the unit accepted START (its deadline is about a dwell later)
        self.started_at: float | None = None
        self.start_token: object | None = None
        #: host time the first START was sent (the unit accepted it no earlier)
        self._start_sent_at: float | None = None
        self._t0 = now
        self._last_activation = now
        self._silence_ref = now
        #: what each request in flight was, by sequence number (``estim.pending``)
        self._tags: dict[int, Pending] = {}
        self._configuring: set[int] = set()
        self._stop: StopRequest | None = None
        self._stop_waiters: list[object] = []
        self._trouble = ""
        self._next_beat = 0.0
        self._beat: tuple[int, float] | None = None  # (seq, sent at) of an unanswered heartbeat
        self._heartbeat = Heartbeat(session_id=session_id)  # the same request every period
        self._next_status = 0.0
        self._recover_until = 0.0
        self._next_poll = 0.0
        self._stalled_s = 0.0
        self._pending_fault: str | None = None
        #: (code, channel) of the unit's fault, once it reported one
        self._fault: tuple[int, int] | None = None
        #: every amplitude (uA) the limits judged for each channel: what the unit's
        #: reports are checked against (SAFETY.md 9)
        self._judged_ua: dict[int, set[int]] = {
            c.channel: {round(c.amplitude_ma * 1000)} for c in plan.channels
        }
        #: each channel's amplitude change the unit acknowledged last in the order they
        #: were sent: (order, uA); the plan's is order 0
        self._acked_ua: dict[int, tuple[int, int]] = {
            c.channel: (0, round(c.amplitude_ma * 1000)) for c in plan.channels
        }
        #: changes sent and not acknowledged (on their way, or never answered): the unit
        #: may have carried them out; by channel, order -> uA
        self._unconfirmed_ua: dict[int, dict[int, int]] = {c.channel: {} for c in plan.channels}
        self._changes_sent = 0
        #: what the record must add to its reason: numbers from the unit not believed
        self._notes: list[str] = []
        self._undurable: dict[int, float] = {}
        self._record("start_requested", start_requested, now=now)
        self.recorder.build()  # events[0]: the runner commits it before anything is sent
        self._undurable.pop(0, None)

    @property
    def state(self) -> SessionState:
        return self.states.state

    @property
    def done(self) -> bool:
        return self.states.done

    def not_running(self) -> EstimError:
        """What a command to this session meets once it is not running: the unit's
        fault, if one ended it (``DeviceFault`` with its code and channel)."""
        if self.outcome == "faulted" and self._fault is not None:
            code, channel = self._fault
            return DeviceFault(
                f"session {self.id} was ended by a unit fault: {self.stop_reason}",
                code=code,
                channel=channel,
            )
        verb = "has ended" if self.state.is_end else "is not running"
        return EstimError(f"session {self.id} {verb} ({self.state})")

    @property
    def events(self) -> list[EventRecord]:
        """The records built so far."""
        return self.recorder.events

    # -- what the parts provide to each other (``estim.policy.SessionPolicy`` has them) ---

    def _activate(self, now: float) -> None:
        raise NotImplementedError

    def _silence_deadline(self) -> float:
        raise NotImplementedError

    def _link_trouble(self, now: float, why: str) -> None:
        raise NotImplementedError

    def _poll_truth(self, now: float) -> None:
        raise NotImplementedError

    def _send_heartbeat(self, now: float) -> None:
        raise NotImplementedError

    def _check_report(self, status: UnitStatus, now: float) -> None:
        raise NotImplementedError

    def _short_of_dwell(self) -> str | None:
        raise NotImplementedError

    # -- stopping and ending -----------------------------------------------------------

    def stop(
        self,
        reason: StopReason,
        detail: str,
        now: float,
        token: object = None,
        *,
        outcome: str | None = None,
    ) -> None:
        """Output off now: STOP at once; the session then ends with the unit's figures.
        ``token`` is resolved once the STOP is acknowledged (or the link given up).
        ``outcome`` is the end event when it is not the reason's (``"fault"``)."""
        self._activate(now)
        if self.done:
            self._resolve(token, None)
            return
        if token is not None:
            self._stop_waiters.append(token)
        if self._stop is not None:
            if outcome is not None and self._stop.outcome is None:
                self._stop.outcome, self._stop.detail = outcome, detail  # the graver cause
            return  # one STOP is on its way already; it is resent until acknowledged
        self._stop = StopRequest(
            reason, detail or reason.name.lower().replace("_", " "), outcome=outcome
        )
        if self.states.host is Host.CONFIGURING:  # nothing was started: nothing to stop
            self._end(
                outcome or _OUTCOME_OF_STOP.get(reason, "stopped"),
                self._stop.detail,
                ended_by=None,
                now=now,
            )
            return
        self._send(Stop(reason=int(reason)), now, StopAsked(), retries="forever")
        if self.states.host in (Host.LIVE, Host.STARTING):
            self.states.fire(StopSent())
            self._silence_ref = max(self._silence_ref, now)
        self._record(
            "stop_requested", {"reason": reason.name, "detail": self._stop.detail}, now=now
        )

    def _halt(self, reason: StopReason, detail: str, now: float) -> None:
        """A host-side failure: output off first, the record after."""
        if self._stop is not None or self.done:
            if self._stop is not None and self._stop.outcome == "fault":
                return  # a fault stop says the graver cause already
            if self._stop is not None and self._stop.reason != StopReason.HOST_ERROR:
                self._stop = StopRequest(reason, detail, self._stop.acked_at)
            return
        self.stop(reason, detail, now)

    def _end_by_stop(self, now: float) -> None:
        stop = self._stop
        assert stop is not None
        if self.states.host is Host.RECOVERING:
            self._end(
                "link_lost",
                f"{self._trouble}; the host stopped output once the unit answered",
                ended_by=None,
                now=now,
            )
            return
        outcome = stop.outcome or _OUTCOME_OF_STOP.get(stop.reason, "stopped")
        if outcome != "completed":
            self._end(outcome, stop.detail, ended_by=None, now=now)
            return
        short = self._short_of_dwell()
        if short is not None:
            self._end("stopped", short, ended_by="host", now=now)
        else:
            self._end(outcome, "the host's dwell timer stopped it", ended_by="host", now=now)

    def _refused(self, error: DeviceError, now: float) -> None:
        self._resolve(self.start_token, error)
        if self._stop is not None:  # stopped while starting: the STOP is on its way anyway
            self._end("stopped", self._stop.detail, ended_by=None, now=now)
        else:
            self._end("start_refused", str(error), ended_by=None, now=now)

    def _end(self, event: str, reason: str, *, ended_by: str | None, now: float) -> None:
        if self.done:
            return
        if self._notes:
            reason = "; ".join([reason, *self._notes])
        self.states.fire(Ended(event))
        self.outcome = self.states.state.value
        self.stop_reason = reason
        self.ended_by = ended_by
        start_unanswered = any(isinstance(tag, StartAsked) for tag in self._tags.values())
        for seq in list(self._tags):
            self.link.cancel(seq)
        self._tags.clear()
        if start_unanswered and self._stop is None:
            # ended before the unit answered START (on the unit's own word, say): it may
            # yet take it, with no session left here to stop it or feed its watchdog
            self.link.send(Stop(reason=int(StopReason.HOST_ERROR)), now, self)
        for token in self._stop_waiters:
            self._resolve(token, None)
        self._stop_waiters.clear()
        self._resolve(self.start_token, EstimError(f"session {self.id} ended: {reason}"))
        self._record(
            "ended",
            {
                "outcome": self.outcome,
                "reason": reason,
                "ended_by": ended_by,
                "delivered_ms": self.delivered_ms,
            },
            now=now,
        )

    def _setpoints_allowed(self, channel: int) -> set[int]:
        """What the unit's setpoint on ``channel`` may be now (uA): the change it
        acknowledged last, and any sent after that one it has not acknowledged (the
        unit carries requests out in order, so one sent before it cannot be current)."""
        order, ua = self._acked_ua[channel]
        later = self._unconfirmed_ua[channel]
        return {ua} | {u for o, u in later.items() if o > order}

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, message: Message, now: float, tag: Pending, *, retries: Retries = None) -> int:
        seq = self.link.send(message, now, self, retries=retries)
        self._tags[seq] = tag
        return seq

    def _resolve(self, token: object, error: EstimError | None) -> None:
        if token is None:
            return
        if token is self.start_token:
            self.start_token = None
        self.resolved.append((token, error))

    def _record(
        self,
        kind: str,
        data: dict[str, Any] | None = None,
        *,
        now: float,
        unit_ms: int | None = None,
    ) -> None:
        n = self.recorder.add(now, kind, data or {}, unit_ms, self.state.value)
        self._undurable[n] = now

    @property
    def has_records(self) -> bool:
        return self.recorder.waiting

    def take_records(self) -> list[tuple[EventRecord, str]]:
        """The records made since the last call, as ``EventRecord``s with the session
        state when each was made. A runner asks after it has written what the same
        decisions sent: a STOP never waits for its record."""
        return self.recorder.take()
