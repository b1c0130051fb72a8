"""The session policy, pure: everything a running session decides, from the
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
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Protocol

from estim.errors import (
    DeviceError,
    DeviceFault,
    EstimError,
    LinkLost,
    LinkTimeout,
    OutputLimitError,
)
from estim.info import MODES, WAVEFORMS, UnitStatus
from estim.limits import Limits
from estim.plan import ChannelPlan, SessionPlan
from estim.protocol import (
    OUTPUT_STATES,
    AmplitudeReached,
    Booted,
    ButtonPressed,
    Completed,
    ConfigureChannel,
    ErrorCode,
    Event,
    EventGap,
    Fault,
    FaultRaised,
    GetStatus,
    Heartbeat,
    Message,
    Nack,
    OutputStarted,
    RampDone,
    RampDownStarted,
    SetAmplitude,
    Start,
    State,
    Status,
    Stop,
    Stopped,
    StopReason,
)
from estim.protocol.host import Retries
from estim.record import EventRecord
from estim.refusals import device_error
from estim.session_state import SessionState, StateMachine

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

    def send(
        self, message: Message, now: float, owner: SessionPolicy, *, retries: Retries = None
    ) -> int: ...

    def cancel(self, seq: int) -> None: ...


class Phase(Enum):
    CONFIGURING = "configuring"
    STARTING = "starting"
    LIVE = "live"
    STOPPING = "stopping"
    RECOVERING = "recovering"
    DONE = "done"


@dataclass
class _StopRequest:
    reason: StopReason
    detail: str
    #: when the unit acknowledged it (then the end event is awaited a while)
    acked_at: float | None = None
    #: the session's end event, when not the reason's (a fault the host stopped for)
    outcome: str | None = None


def fault_name(code: int) -> str:
    return Fault(code).name if code in Fault._value2member_map_ else f"UNKNOWN_{code}"


class SessionPolicy:
    """One session's decisions. Create it, then ``begin(now)``; see the module docstring."""

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
        self.created_utc = created_utc
        self.machine = StateMachine()
        self.phase = Phase.CONFIGURING
        self.events: list[EventRecord] = []
        #: records made and not yet built (n, now, kind, data, unit_ms, session state):
        #: see ``build_records``
        self.unbuilt: list[tuple[int, float, str, dict[str, Any], int | None, str]] = []
        #: records built and not yet handed to the runner
        self._built: list[tuple[EventRecord, str]] = []
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
        self._tags: dict[int, Any] = {}
        self._configuring: set[int] = set()
        self._stop: _StopRequest | None = None
        self._stop_waiters: list[object] = []
        self._trouble = ""
        self._next_beat = 0.0
        self._beat: tuple[int, float] | None = None  # (seq, sent at) of an unanswered heartbeat
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
        #: what the record must add to its reason: numbers from the unit not believed
        self._notes: list[str] = []
        self._undurable: dict[int, float] = {}
        self._record("start_requested", start_requested, now=now)
        self.build_records()  # events[0]: the runner commits it before anything is sent
        self._undurable.pop(0, None)

    # -- what a runner asks -----------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self.machine.state

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

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

    def remaining(self, now: float) -> float:
        """Seconds until the dwell ends (host's timer), 0 once ended."""
        if self.host_deadline is None or self.state.is_end:
            return 0.0
        return max(0.0, self.host_deadline - now)

    def next_deadline(self) -> float | None:
        """When ``tick`` must next run."""
        phase = self.phase
        if phase is Phase.DONE:
            return None
        times: list[float] = []
        if self._undurable and self.journal_error is None:
            times.append(min(self._undurable.values()) + JOURNAL_DURABLE_S)
        if phase is Phase.LIVE:
            soonest = min(self._next_beat, self._next_status, self._silence_deadline())
            if self._beat is not None:
                soonest = min(soonest, self._beat[1] + HEARTBEAT_ANSWER_S)
            if self.host_deadline is not None:
                soonest = min(soonest, self.host_deadline)
            times.append(soonest)
        elif phase is Phase.STOPPING:
            stop = self._stop
            if stop is not None and stop.acked_at is not None:
                times.append(stop.acked_at + END_EVENT_WAIT_S)
            else:
                times.append(self._silence_deadline())
        elif phase is Phase.RECOVERING:
            times += [self._next_poll, self._recover_until]
        return min(times) if times else None

    # -- inputs ---------------------------------------------------------------------------

    def begin(self, now: float, token: object) -> None:
        """Configure every channel; START follows when all are accepted."""
        self.start_token = token
        self._activate(now)
        for channel in self.plan.channels:
            seq = self._send(_configure(channel), now, ("configure", channel.channel, 1))
            self._configuring.add(seq)

    def on_answer(self, request: Message, response: Message, now: float) -> None:
        self._activate(now)
        tag = self._tags.pop(request.seq, None)
        if tag is None or self.done:
            return
        kind = tag[0] if isinstance(tag, tuple) else tag
        handler = getattr(self, f"_answer_{kind}")
        handler(tag, request, response, now)

    def on_expired(self, request: Message, now: float) -> None:
        self._activate(now)
        tag = self._tags.pop(request.seq, None)
        if tag is None or self.done:
            return
        kind = tag[0] if isinstance(tag, tuple) else tag
        if kind == "configure" and tag[2] < CONFIGURE_REQUESTS and self.phase is Phase.CONFIGURING:
            self._configuring.discard(request.seq)
            again = ("configure", tag[1], tag[2] + 1)
            self._configuring.add(self._send(request, now, again))  # a new seq
        elif kind in ("configure", "start"):
            self._link_trouble(now, f"the unit did not answer {request.TYPE.name}")
        elif kind == "amplitude":
            self._resolve(
                tag[1],
                LinkTimeout(f"the unit did not answer the amplitude change on channel {tag[2]}"),
            )
            self._record(
                "amplitude_unconfirmed",
                {
                    "channel": tag[2],
                    "ma": tag[3],
                    "error": "no answer from the unit; it may have taken the change",
                },
                now=now,
            )
        # a heartbeat or a status poll that went unanswered: silence is watched as a whole

    def on_event(self, item: Event | EventGap, now: float) -> None:
        self._activate(now)
        if isinstance(item, EventGap):
            self._record(
                "events_missed", {"expected": item.expected, "received": item.received}, now=now
            )
            self._poll_truth(now)
            return
        if item.session_id not in (0, self.session_id) or self.done:
            return
        self._unit_event(item, now)

    def on_link_down(self, error: LinkLost, now: float) -> None:
        """The port itself failed: nothing more can be sent or heard."""
        self._activate(now)
        if self.done:
            return
        self._resolve(self.start_token, error)
        self._end("link_lost", str(error), ended_by=None, now=now)

    def tick(self, now: float) -> None:
        """What time alone does. Call at ``next_deadline`` (or any time)."""
        self._activate(now)
        phase = self.phase
        if phase is Phase.DONE:
            return
        if (
            self._undurable
            and self.journal_error is None  # (once failed, it has stopped output already)
            and now - min(self._undurable.values()) >= JOURNAL_DURABLE_S
        ):
            self.journal_error = (
                f"an event could not be made durable within {JOURNAL_DURABLE_S:g} s"
            )
            self._halt(StopReason.HOST_ERROR, f"journal: {self.journal_error}", now)
            phase = self.phase
        if phase is Phase.LIVE:
            self._tick_live(now)
        elif phase is Phase.STOPPING:
            self._tick_stopping(now)
        elif phase is Phase.RECOVERING:
            self._tick_recovering(now)

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
        self._stop = _StopRequest(
            reason, detail or reason.name.lower().replace("_", " "), outcome=outcome
        )
        if self.phase is Phase.CONFIGURING:  # nothing was started: nothing to stop
            self._end(
                outcome or _OUTCOME_OF_STOP.get(reason, "stopped"),
                self._stop.detail,
                ended_by=None,
                now=now,
            )
            return
        self._send(Stop(reason=int(reason)), now, "stop", retries="forever")
        if self.phase in (Phase.LIVE, Phase.STARTING):
            self.phase = Phase.STOPPING
            self._silence_ref = max(self._silence_ref, now)
        self._record(
            "stop_requested", {"reason": reason.name, "detail": self._stop.detail}, now=now
        )

    def set_amplitude(self, channel: int, ma: float, now: float, token: object) -> None:
        """A live change, checked by the same limits as the plan before anything is sent."""
        self._activate(now)
        planned = next((c for c in self.plan.channels if c.channel == channel), None)
        if self.state.is_end or self.phase is not Phase.LIVE:
            self._resolve(token, self.not_running())
            return
        if planned is None:
            self._resolve(token, OutputLimitError(f"channel {channel} is not in this session"))
            return
        problem = self.limits.amplitude_problem(planned, ma)
        if problem:
            self._record(
                "amplitude_refused", {"channel": channel, "ma": ma, "error": problem}, now=now
            )
            self._resolve(token, OutputLimitError(problem))
            return
        self._record("amplitude_set", {"channel": channel, "ma": ma}, now=now)
        self._judged_ua[channel].add(round(ma * 1000))
        message = SetAmplitude(
            session_id=self.session_id, channel=channel, amplitude_ua=round(ma * 1000)
        )
        self._send(message, now, ("amplitude", token, channel, ma))

    def journal_durable(self, n: int) -> None:
        """Every record up to ``n`` is on disk."""
        for k in [k for k in self._undurable if k <= n]:
            del self._undurable[k]

    def journal_failed(self, error: str, now: float) -> None:
        self._activate(now)
        self.journal_error = error
        if not self.done:
            self._halt(StopReason.HOST_ERROR, f"journal: {error}", now)

    def callback_failed(self, error: str, now: float) -> None:
        self._activate(now)
        if not self.done:
            self._halt(StopReason.HOST_ERROR, f"on_event callback raised: {error}", now)

    # -- the live loop ----------------------------------------------------------------------

    def _tick_live(self, now: float) -> None:
        assert self.host_deadline is not None
        if now >= self.host_deadline:
            self.stop(StopReason.DWELL_ELAPSED, "the host's dwell timer is up", now)
            return
        if now >= self._silence_deadline():
            heard = self._heard()
            self._link_trouble(now, f"the unit has been silent for {(now - heard) * 1000:.0f} ms")
            return
        beat = self._beat
        if now >= self._next_beat or (beat is not None and now >= beat[1] + HEARTBEAT_ANSWER_S):
            self._send_heartbeat(now)
        if now >= self._next_status:
            self._next_status = now + self.status_every
            self._send(GetStatus(), now, "status", retries=0)

    def _send_heartbeat(self, now: float) -> None:
        if self._beat is not None:
            self._tags.pop(self._beat[0], None)
            self.link.cancel(self._beat[0])
        seq = self._send(Heartbeat(session_id=self.session_id), now, "heartbeat", retries=0)
        self._beat = (seq, now)
        self._next_beat = now + self.heartbeat

    def _tick_stopping(self, now: float) -> None:
        stop = self._stop
        assert stop is not None
        if stop.acked_at is not None and now >= stop.acked_at + END_EVENT_WAIT_S:
            self._end_by_stop(now)
        elif stop.acked_at is None and now >= self._silence_deadline():
            heard = self._heard()
            self.unit_unreachable = True
            self._end(
                "link_lost",
                f"STOP was not acknowledged: the unit has been silent for {(now - heard) * 1000:.0f} ms; "
                "its watchdog turns output off",
                ended_by=None,
                now=now,
            )

    def _tick_recovering(self, now: float) -> None:
        if now >= self._recover_until:
            self.unit_unreachable = True
            self._end(
                "link_lost",
                f"{self._trouble}; the unit did not answer for {LINK_RECOVERY_S:g} s more; "
                "its watchdog turns output off",
                ended_by=None,
                now=now,
            )
            return
        if now >= self._next_poll:
            self._next_poll = now + RECOVERY_POLL_S
            self._poll_truth(now)

    def _heard(self) -> float:
        last = self.link.last_rx
        return max(self._silence_ref, last if last is not None else self._silence_ref)

    def _silence_deadline(self) -> float:
        return self._heard() + self.plan.watchdog

    def _activate(self, now: float) -> None:
        """Every input: a host that was frozen does not blame the unit for its own silence."""
        stalled = now - self._last_activation
        self._last_activation = max(self._last_activation, now)
        if stalled > max(0.25, self.plan.watchdog / 2) and self.phase in (
            Phase.LIVE,
            Phase.STOPPING,
        ):
            self._stalled_s = stalled
            self._silence_ref = now
            self._record("host_stalled", {"seconds": round(stalled, 3)}, now=now)
            if self.phase is Phase.LIVE:
                self._poll_truth(now)

    def _link_trouble(self, now: float, why: str) -> None:
        """The unit is silent: stop for sure, then listen for what it says."""
        self._trouble = why
        self._record("unit_silent", {"detail": why}, now=now)
        self._resolve(self.start_token, LinkLost(f"{why}; no session was started"))
        if self._stop is None:
            self._stop = _StopRequest(StopReason.HOST_ERROR, why)
            self._send(Stop(reason=int(StopReason.HOST_ERROR)), now, "stop", retries="forever")
        self.phase = Phase.RECOVERING
        self._recover_until = now + LINK_RECOVERY_S
        self._next_poll = now + RECOVERY_POLL_S
        self._poll_truth(now)

    def _poll_truth(self, now: float) -> None:
        self._send(GetStatus(), now, "truth", retries=0)

    # -- answers ---------------------------------------------------------------------------

    def _answer_configure(self, tag: Any, request: Message, response: Message, now: float) -> None:
        self._configuring.discard(request.seq)
        if isinstance(response, Nack):
            self._refused(device_error(response, f"channel {tag[1]} settings"), now)
            return
        if not self._configuring and self.phase is Phase.CONFIGURING:
            self.phase = Phase.STARTING
            self.host_deadline = now + self.plan.dwell  # before START: it can only end early
            self._start_sent_at = now
            start = Start(
                session_id=self.session_id,
                dwell_ms=round(self.plan.dwell * 1000),
                ramp_ms=round(self.plan.ramp * 1000),
                watchdog_ms=round(self.plan.watchdog * 1000),
                channel_mask=sum(1 << (c.channel - 1) for c in self.plan.channels),
            )
            self._send(start, now, "start")

    def _answer_start(self, tag: Any, request: Message, response: Message, now: float) -> None:
        if isinstance(response, Nack):
            self._refused(device_error(response, "start"), now)
            return
        self.machine.fire("start_accepted")
        self.started_at = now
        self._record(
            "start_accepted", {"dwell_s": self.plan.dwell, "ramp_s": self.plan.ramp}, now=now
        )
        self._resolve(self.start_token, None)
        if self.phase is Phase.STARTING:  # (STOPPING if a stop came while starting)
            self.phase = Phase.LIVE
            self._silence_ref = now
            self._send_heartbeat(now)
            self._next_status = now + self.status_every
            self._send(GetStatus(), now, "status", retries=0)

    def _answer_heartbeat(self, tag: Any, request: Message, response: Message, now: float) -> None:
        if self._beat is not None and self._beat[0] == request.seq:
            self._beat = None
        if isinstance(response, Nack) and not self.state.is_end:
            if response.error == ErrorCode.FAULT_LATCHED and self._pending_fault:
                self._end("fault", self._pending_fault, ended_by=None, now=now)
            else:
                self._poll_truth(now)  # the event that explains it was lost: ask

    def _answer_status(self, tag: Any, request: Message, response: Message, now: float) -> None:
        if isinstance(response, Status):
            self.last_status = UnitStatus.from_message(response)
            self._check_report(self.last_status, now)

    def _answer_truth(self, tag: Any, request: Message, response: Message, now: float) -> None:
        if not isinstance(response, Status):
            return
        status = self.last_status = UnitStatus.from_message(response)
        self._check_report(status, now)
        if self.done:
            return
        ours = status.session_id == self.session_id
        if ours and status.state in OUTPUT_STATES:
            return  # still running: nothing to conclude
        if status.state == State.FAULT:
            names = ", ".join(fault_name(f) for f in sorted(status.faults)) or "a fault"
            why = self._pending_fault or f"unit fault {names}"
            if self.phase is Phase.RECOVERING and Fault.WATCHDOG in status.faults:
                why = f"unit fault WATCHDOG: its watchdog stopped output while {self._trouble}"
            self._end("fault", f"{why} (its event was lost)", ended_by=None, now=now)
        elif self.phase is Phase.RECOVERING and not ours:
            self._end(
                "link_lost",
                f"{self._trouble}; the unit never started this session",
                ended_by=None,
                now=now,
            )
        elif self._stop is not None:
            if self._stop.acked_at is None:
                return  # our STOP's answer (and its STOPPED) are on the way
            self._end_by_stop(now)
        elif (
            self.started_at is not None
            and now >= self.started_at + self.plan.dwell - self.plan.watchdog
        ):
            self._end(
                "completed",
                "the unit's own deadline ended it (its COMPLETED event was lost)",
                ended_by="unit",
                now=now,
            )
        else:
            self._end(
                "stopped",
                "the session ended at the unit (its event was lost)",
                ended_by=None,
                now=now,
            )

    def _answer_stop(self, tag: Any, request: Message, response: Message, now: float) -> None:
        stop = self._stop
        assert stop is not None
        if stop.acked_at is None:
            stop.acked_at = now  # output is off; its STOPPED event follows
        for token in self._stop_waiters:
            self._resolve(token, None)
        self._stop_waiters.clear()

    def _answer_amplitude(self, tag: Any, request: Message, response: Message, now: float) -> None:
        _, token, channel, ma = tag
        if isinstance(response, Nack):
            error = device_error(response, f"amplitude on channel {channel}")
            self._record(
                "amplitude_refused", {"channel": channel, "ma": ma, "error": str(error)}, now=now
            )
            self._resolve(token, error)
        else:
            self._resolve(token, None)

    # -- events from the unit ----------------------------------------------------------------

    def _unit_event(self, item: Event, now: float) -> None:
        ms = item.time_ms
        if isinstance(item, OutputStarted):
            self._record(
                "output_started",
                {"dwell_ms": item.dwell_ms, "channel_mask": item.channel_mask},
                now=now,
                unit_ms=ms,
            )
            if (item.dwell_ms, item.channel_mask) != (self._dwell_ms, self._channel_mask):
                self._unit_misbehaves(
                    f"the unit started output for {item.dwell_ms} ms on channel mask "
                    f"{item.channel_mask:#x}; this session asked for {self._dwell_ms} ms on "
                    f"{self._channel_mask:#x}",
                    now,
                )
        elif isinstance(item, RampDone):
            if self.machine.can("ramp_done"):
                self.machine.fire("ramp_done")
            self._record("ramp_done", now=now, unit_ms=ms)
        elif isinstance(item, RampDownStarted):
            if self.machine.can("ramp_down"):
                self.machine.fire("ramp_down")
            self._record("ramp_down", {"remaining_ms": item.remaining_ms}, now=now, unit_ms=ms)
        elif isinstance(item, AmplitudeReached):
            self._record(
                "amplitude_reached",
                {"channel": item.channel, "ma": item.amplitude_ua / 1000},
                now=now,
                unit_ms=ms,
            )
            self._check_amplitude(item.channel, item.amplitude_ua, item.amplitude_ua, now)
        elif isinstance(item, Completed):
            self.delivered_ms = self._believed_delivered(item.delivered_ms, now)
            self._record("unit_completed", {"delivered_ms": item.delivered_ms}, now=now, unit_ms=ms)
            if not self.machine.state.is_end:  # the dwell ran out first, whatever else was asked
                self._end("completed", "the unit's own deadline ended it", ended_by="unit", now=now)
        elif isinstance(item, FaultRaised):
            name = fault_name(item.fault)
            self._fault = self._fault or (item.fault, item.channel)
            self._pending_fault = f"unit fault {name}" + (
                f" on channel {item.channel}" if item.channel else ""
            )
            if item.fault == Fault.WATCHDOG and self._stalled_s:
                self._pending_fault += f": the host was stalled for {self._stalled_s:.1f} s"
            elif item.fault == Fault.WATCHDOG and self.phase is Phase.RECOVERING:
                self._pending_fault += f": its watchdog stopped output while {self._trouble}"
            self._record(
                "fault",
                {"fault": item.fault, "name": name, "channel": item.channel},
                now=now,
                unit_ms=ms,
            )
            # SAFETY.md 9: a reported fault stops the session from the host too, whatever
            # the unit does next (its STOPPED normally follows at once)
            if self.phase not in (Phase.CONFIGURING, Phase.RECOVERING):
                self.stop(StopReason.HOST_ERROR, self._pending_fault, now, outcome="fault")
        elif isinstance(item, Stopped):
            self.delivered_ms = self._believed_delivered(item.delivered_ms, now)
            reason = (
                StopReason(item.reason).name
                if item.reason in StopReason._value2member_map_
                else str(item.reason)
            )
            self._record(
                "unit_stopped",
                {"reason": reason, "delivered_ms": item.delivered_ms},
                now=now,
                unit_ms=ms,
            )
            if self.machine.state.is_end:
                return
            if item.reason == StopReason.FAULT:
                self._end(
                    "fault",
                    self._pending_fault or "the unit latched a fault",
                    ended_by=None,
                    now=now,
                )
            elif self._stop is not None:
                self._end_by_stop(now)
            else:
                self._end(
                    "stopped", f"stopped at the unit (reason {reason})", ended_by=None, now=now
                )
        elif isinstance(item, ButtonPressed):
            self._record("button", {"button": item.button}, now=now, unit_ms=ms)
        elif isinstance(item, Booted):
            self._record("unit_restarted", {"cause": item.cause}, now=now, unit_ms=ms)
            if not self.machine.state.is_end and self.phase is not Phase.CONFIGURING:
                self._pending_fault = "the unit restarted (power cycle or reset); output is off"
                self._end("fault", self._pending_fault, ended_by=None, now=now)

    # -- ending ---------------------------------------------------------------------------

    def _halt(self, reason: StopReason, detail: str, now: float) -> None:
        """A host-side failure: output off first, the record after."""
        if self._stop is not None or self.done:
            if self._stop is not None and self._stop.outcome == "fault":
                return  # a fault stop says the graver cause already
            if self._stop is not None and self._stop.reason != StopReason.HOST_ERROR:
                self._stop = _StopRequest(reason, detail, self._stop.acked_at)
            return
        self.stop(reason, detail, now)

    def _end_by_stop(self, now: float) -> None:
        stop = self._stop
        assert stop is not None
        if self.phase is Phase.RECOVERING:
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
        self.machine.fire(event)
        self.outcome = self.machine.state.value
        self.stop_reason = reason
        self.ended_by = ended_by
        self.phase = Phase.DONE
        for seq in list(self._tags):
            self.link.cancel(seq)
        self._tags.clear()
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

    # -- what the unit reports, checked (SAFETY.md 9) --------------------------------------

    @property
    def _dwell_ms(self) -> int:
        return round(self.plan.dwell * 1000)

    @property
    def _channel_mask(self) -> int:
        return sum(1 << (c.channel - 1) for c in self.plan.channels)

    def _check_report(self, status: UnitStatus, now: float) -> None:
        """A STATUS of this session's output must show what this session set: each
        channel's setpoint one the limits judged (or 0), its output no higher, and
        no other channel on. Anything else stops the session as a unit fault."""
        if self.done or status.state not in OUTPUT_STATES:
            return
        if status.session_id != self.session_id:
            if self.phase is Phase.LIVE:
                self._unit_misbehaves(
                    f"the unit is delivering output for session {status.session_id:08x}, "
                    "not this one",
                    now,
                )
            return
        for channel in status.channels:
            self._check_amplitude(
                channel.channel,
                round(channel.setpoint_ma * 1000),
                round(channel.amplitude_ma * 1000),
                now,
            )

    def _check_amplitude(self, channel: int, setpoint_ua: int, output_ua: int, now: float) -> None:
        judged = self._judged_ua.get(channel)
        if judged is None:
            if setpoint_ua or output_ua:
                self._unit_misbehaves(
                    f"the unit reports channel {channel} at {max(setpoint_ua, output_ua) / 1000:g} "
                    "mA, a channel this session does not use",
                    now,
                )
            return
        if setpoint_ua and setpoint_ua not in judged:
            shown = ", ".join(f"{ua / 1000:g}" for ua in sorted(judged))
            self._unit_misbehaves(
                f"the unit reports channel {channel} set to {setpoint_ua / 1000:g} mA, but this "
                f"session set {shown} mA",
                now,
            )
        elif output_ua > max(judged):
            self._unit_misbehaves(
                f"the unit reports channel {channel} delivering {output_ua / 1000:g} mA, above "
                f"the {max(judged) / 1000:g} mA this session set",
                now,
            )

    def _unit_misbehaves(self, why: str, now: float) -> None:
        """The unit does something other than it was told: output off now, a fault."""
        if self.done or (self._stop is not None and self._stop.outcome == "fault"):
            return
        self._record("unit_mismatch", {"detail": why}, now=now)
        self._pending_fault = f"{why}; output stopped"
        self.stop(StopReason.HOST_ERROR, self._pending_fault, now, outcome="fault")

    def _believed_delivered(self, ms: int, now: float) -> int | None:
        """The unit's delivered time, if it can be true: no more than the dwell, nor
        than the time since the first START was sent (with the clocks' tolerance)."""
        planned = self._dwell_ms
        if self._start_sent_at is not None:
            since_start = (now - self._start_sent_at) * 1000
            planned = min(planned, max(0, round(since_start)))
        limit = round(planned * (1 + CLOCK_TOLERANCE)) + REPORT_TICK_MS
        if ms <= limit:
            return ms
        self._record("unit_implausible", {"delivered_ms": ms, "at_most_ms": limit}, now=now)
        self._notes.append(
            f"the unit reported {ms / 1000:.3f} s delivered, more than the {limit / 1000:.3f} s "
            "output can have been on; not believed, so the time delivered is unknown"
        )
        return None

    def _short_of_dwell(self) -> str | None:
        """Why a session the host's dwell timer ended is not a completed dwell, if it
        is not: the unit's delivered time falls short by more than the host's timer
        can be early (the START attempts before the unit accepted one) and the
        clocks' tolerance. Then the host's clock ran ahead (a jump, a step)."""
        sent = self._start_sent_at
        if self.delivered_ms is None or sent is None:
            return None
        planned = self._dwell_ms
        window_ms = 0.0 if self.started_at is None else (self.started_at - sent) * 1000
        enough = planned - window_ms - planned * CLOCK_TOLERANCE - REPORT_TICK_MS
        if self.delivered_ms >= enough:
            return None
        return (
            f"the host's dwell timer ended it after {self.delivered_ms / 1000:g} s of "
            f"{self.plan.dwell:g} s by the unit's clock: the host's clock ran ahead of the "
            "unit's (a jump or a step), so the dwell was not complete"
        )

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, message: Message, now: float, tag: Any, *, retries: Retries = None) -> int:
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
        n = len(self.events) + len(self.unbuilt)
        self.unbuilt.append((n, now, kind, data or {}, unit_ms, self.state.value))
        self._undurable[n] = now

    @property
    def has_records(self) -> bool:
        return bool(self.unbuilt or self._built)

    def take_records(self) -> list[tuple[EventRecord, str]]:
        """The records made since the last call, as ``EventRecord``s with the session
        state when each was made. A runner asks after it has written what the same
        decisions sent: a STOP never waits for its record."""
        self.build_records()
        built, self._built = self._built, []
        return built

    def build_records(self) -> None:
        """Build what was recorded into ``events`` (handed over by ``take_records``)."""
        while self.unbuilt:  # one at a time: a failure leaves the rest, none twice
            n, now, kind, data, unit_ms, state = self.unbuilt[0]
            t = round(now - self._t0, 6)
            utc = (self.created_utc + timedelta(seconds=t)).isoformat(timespec="milliseconds")
            record = EventRecord(
                n=n, utc=utc.replace("+00:00", "Z"), t=t, unit_ms=unit_ms, kind=kind, data=data
            )
            del self.unbuilt[0]
            self.events.append(record)
            self._built.append((record, state))


def _configure(plan: ChannelPlan) -> ConfigureChannel:
    return ConfigureChannel(
        channel=plan.channel,
        waveform=WAVEFORMS[plan.waveform],
        mode=MODES[plan.mode],
        frequency_dhz=round(plan.frequency_hz * 10),
        pulse_width_us=plan.pulse_width_us,
        amplitude_ua=round(plan.amplitude_ma * 1000),
        alt_frequency_dhz=round((plan.alt_frequency_hz or 0) * 10),
        switch_ms=round((plan.switch_s or 0) * 1000),
    )
