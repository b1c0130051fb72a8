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

By job (issue 20): ``estim.start_sequence`` (configure, START), ``estim.live_loop``
(heartbeats, the dwell timer, polls, silence and stalls), ``estim.unit_reports``
(the unit's events and reports, checked), ``estim.policy_base`` (the shared state,
stopping and ending), ``estim.recorder`` (records built and stamped), one state
machine (``estim.session_state``) and typed pending requests (``estim.pending``).
``SessionPolicy`` here joins them and is what the core drives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from estim.errors import LinkLost, LinkTimeout, OutputLimitError
from estim.live_loop import LiveLoop
from estim.pending import (
    AmplitudeAsked,
    ConfigureAsked,
    HeartbeatAsked,
    Pending,
    StartAsked,
    StatusAsked,
    StopAsked,
    TruthAsked,
)
from estim.policy_base import (
    CLOCK_TOLERANCE,
    CONFIGURE_REQUESTS,
    END_EVENT_WAIT_S,
    HEARTBEAT_ANSWER_S,
    HEARTBEAT_S,
    JOURNAL_DURABLE_S,
    LINK_RECOVERY_S,
    RECOVERY_POLL_S,
    REPORT_TICK_MS,
    STATUS_EVERY_S,
    Link,
    StopRequest,
    fault_name,
)
from estim.protocol import Event, EventGap, Message, SetAmplitude, StopReason
from estim.session_state import Host
from estim.start_sequence import StartSequence
from estim.unit_reports import UnitReports


class SessionPolicy(StartSequence, LiveLoop, UnitReports):
    """One session's decisions. Create it, then ``begin(now)``; see the module docstring."""

    # -- what a runner asks -----------------------------------------------------------------

    def remaining(self, now: float) -> float:
        """Seconds until the dwell ends (host's timer), 0 once ended."""
        if self.host_deadline is None or self.state.is_end:
            return 0.0
        return max(0.0, self.host_deadline - now)

    def next_deadline(self) -> float | None:
        """When ``tick`` must next run."""
        phase = self.states.host
        if phase is Host.DONE:
            return None
        times: list[float] = []
        if self._undurable and self.journal_error is None:
            times.append(min(self._undurable.values()) + JOURNAL_DURABLE_S)
        if phase is Host.LIVE:
            soonest = min(self._next_beat, self._next_status, self._silence_deadline())
            if self._beat is not None:
                soonest = min(soonest, self._beat[1] + HEARTBEAT_ANSWER_S)
            if self.host_deadline is not None:
                soonest = min(soonest, self.host_deadline)
            times.append(soonest)
        elif phase is Host.STOPPING:
            stop = self._stop
            if stop is not None and stop.acked_at is not None:
                times.append(stop.acked_at + END_EVENT_WAIT_S)
            else:
                times.append(self._silence_deadline())
        elif phase is Host.RECOVERING:
            times += [self._next_poll, self._recover_until]
        return min(times) if times else None

    # -- inputs ---------------------------------------------------------------------------

    def on_answer(self, request: Message, response: Message, now: float) -> None:
        self._activate(now)
        tag = self._tags.pop(request.seq, None)
        if tag is None or self.done:
            return
        ANSWERS[type(tag)](self, tag, request, response, now)

    def on_expired(self, request: Message, now: float) -> None:
        self._activate(now)
        tag = self._tags.pop(request.seq, None)
        if tag is None or self.done:
            return
        if (
            isinstance(tag, ConfigureAsked)
            and tag.attempt < CONFIGURE_REQUESTS
            and self.states.host is Host.CONFIGURING
        ):
            self._configuring.discard(request.seq)
            again = ConfigureAsked(tag.channel, tag.attempt + 1)
            self._configuring.add(self._send(request, now, again))  # a new seq
        elif isinstance(tag, StartAsked) and self._stop is not None:
            pass  # not sent again once the STOP went out (PROTOCOL.md 9): the STOP ends it
        elif isinstance(tag, ConfigureAsked | StartAsked):
            self._link_trouble(now, f"the unit did not answer {request.TYPE.name}")
        elif isinstance(tag, AmplitudeAsked):
            self._resolve(
                tag.token,
                LinkTimeout(
                    f"the unit did not answer the amplitude change on channel {tag.channel}"
                ),
            )
            self._record(
                "amplitude_unconfirmed",
                {
                    "channel": tag.channel,
                    "ma": tag.ma,
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
        phase = self.states.host
        if phase is Host.DONE:
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
            phase = self.states.host
        if phase is Host.LIVE:
            self._tick_live(now)
        elif phase is Host.STOPPING:
            self._tick_stopping(now)
        elif phase is Host.RECOVERING:
            self._tick_recovering(now)

    def set_amplitude(self, channel: int, ma: float, now: float, token: object) -> None:
        """A live change, checked by the same limits as the plan before anything is sent."""
        self._activate(now)
        planned = next((c for c in self.plan.channels if c.channel == channel), None)
        if self.state.is_end or self.states.host is not Host.LIVE:
            self._resolve(token, self.not_running())
            return
        if planned is None:
            self._resolve(token, OutputLimitError(f"channel {channel} is not in this session"))
            return
        problem = self.limits.amplitude_problem(planned, ma)
        if problem:
            shown = ma if type(ma) in (int, float) else repr(ma)  # (the record is JSON)
            self._record(
                "amplitude_refused", {"channel": channel, "ma": shown, "error": problem}, now=now
            )
            self._resolve(token, OutputLimitError(problem))
            return
        ma = self.limits.sent_ma(ma)  # the whole microamps judged: what is sent and recorded
        ua = round(ma * 1000)  # exact: ma is a whole number of microamps
        self._record("amplitude_set", {"channel": channel, "ma": ma}, now=now)
        self._judged_ua[channel].add(ua)
        self._changes_sent += 1
        self._unconfirmed_ua[channel][self._changes_sent] = ua
        message = SetAmplitude(session_id=self.session_id, channel=channel, amplitude_ua=ua)
        self._send(message, now, AmplitudeAsked(token, channel, ma, self._changes_sent))

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


#: how each kind of pending request is answered
ANSWERS: dict[type[Pending], Callable[[SessionPolicy, Any, Message, Message, float], None]] = {
    ConfigureAsked: SessionPolicy._answer_configure,
    StartAsked: SessionPolicy._answer_start,
    HeartbeatAsked: SessionPolicy._answer_heartbeat,
    StatusAsked: SessionPolicy._answer_status,
    TruthAsked: SessionPolicy._answer_truth,
    StopAsked: SessionPolicy._answer_stop,
    AmplitudeAsked: SessionPolicy._answer_amplitude,
}

__all__ = [
    "CLOCK_TOLERANCE",
    "CONFIGURE_REQUESTS",
    "END_EVENT_WAIT_S",
    "HEARTBEAT_ANSWER_S",
    "HEARTBEAT_S",
    "JOURNAL_DURABLE_S",
    "LINK_RECOVERY_S",
    "RECOVERY_POLL_S",
    "REPORT_TICK_MS",
    "STATUS_EVERY_S",
    "Link",
    "SessionPolicy",
    "StopRequest",
    "fault_name",
]
