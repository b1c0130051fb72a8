"""The live loop of a session's policy: a HEARTBEAT every period from this loop
(and another at once when one is unanswered after ``HEARTBEAT_ANSWER_S``), the host's
dwell timer, STATUS polls, the wait for the unit's end event once STOP is
acknowledged, and silence: a unit silent for a watchdog period gets STOP and is
asked its STATUS for ``LINK_RECOVERY_S`` before the link is called lost; a host that
was itself frozen is not a silent unit.
"""

from __future__ import annotations

from estim.errors import DeviceFault, LinkLost
from estim.info import UnitStatus
from estim.pending import (
    AmplitudeAsked,
    HeartbeatAsked,
    StatusAsked,
    StopAsked,
    TruthAsked,
)
from estim.policy_base import (
    END_EVENT_WAIT_S,
    HEARTBEAT_ANSWER_S,
    LINK_RECOVERY_S,
    RECOVERY_POLL_S,
    PolicyBase,
    StopRequest,
    fault_name,
)
from estim.protocol import (
    OUTPUT_STATES,
    ErrorCode,
    Fault,
    GetStatus,
    Message,
    Nack,
    State,
    Status,
    Stop,
    StopReason,
)
from estim.refusals import device_error
from estim.session_state import Host, UnitSilent


class LiveLoop(PolicyBase):
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
            self._send(GetStatus(), now, StatusAsked(), retries=0)

    def _send_heartbeat(self, now: float) -> None:
        if self._beat is not None:
            self._tags.pop(self._beat[0], None)
            self.link.cancel(self._beat[0])
        seq = self._send(self._heartbeat, now, HeartbeatAsked(), retries=0)
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
        if stalled > max(0.25, self.plan.watchdog / 2) and self.states.host in (
            Host.LIVE,
            Host.STOPPING,
        ):
            self._stalled_s = stalled
            self._silence_ref = now
            self._record("host_stalled", {"seconds": round(stalled, 3)}, now=now)
            if self.states.host is Host.LIVE:
                self._poll_truth(now)

    def _link_trouble(self, now: float, why: str) -> None:
        """The unit is silent: stop for sure, then listen for what it says."""
        self._trouble = why
        self._record("unit_silent", {"detail": why}, now=now)
        self._resolve(self.start_token, LinkLost(f"{why}; no session was started"))
        if self._stop is None:
            self._stop = StopRequest(StopReason.HOST_ERROR, why)
            self._send(Stop(reason=int(StopReason.HOST_ERROR)), now, StopAsked(), retries="forever")
        self.states.fire(UnitSilent())
        self._recover_until = now + LINK_RECOVERY_S
        self._next_poll = now + RECOVERY_POLL_S
        self._poll_truth(now)

    def _poll_truth(self, now: float) -> None:
        self._send(GetStatus(), now, TruthAsked(), retries=0)

    # -- answers ---------------------------------------------------------------------------

    def _answer_heartbeat(
        self, tag: HeartbeatAsked, request: Message, response: Message, now: float
    ) -> None:
        if self._beat is not None and self._beat[0] == request.seq:
            self._beat = None
        if isinstance(response, Nack) and not self.state.is_end:
            if response.error == ErrorCode.FAULT_LATCHED and self._pending_fault:
                self._end("fault", self._pending_fault, ended_by=None, now=now)
            else:
                self._poll_truth(now)  # the event that explains it was lost: ask

    def _answer_status(
        self, tag: StatusAsked, request: Message, response: Message, now: float
    ) -> None:
        if isinstance(response, Status):
            self.last_status = UnitStatus.from_message(response)
            self._check_report(self.last_status, now)

    def _answer_truth(
        self, tag: TruthAsked, request: Message, response: Message, now: float
    ) -> None:
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
            if self.states.host is Host.RECOVERING and Fault.WATCHDOG in status.faults:
                why = f"unit fault WATCHDOG: its watchdog stopped output while {self._trouble}"
            self._end("fault", f"{why} (its event was lost)", ended_by=None, now=now)
        elif self.states.host is Host.RECOVERING and not ours:
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

    def _answer_stop(self, tag: StopAsked, request: Message, response: Message, now: float) -> None:
        stop = self._stop
        assert stop is not None
        state = getattr(response, "state", State.IDLE)
        if state in OUTPUT_STATES and stop.outcome != "fault":
            # PROTOCOL.md 6.1: a STOP turns output off at once; this unit says it did not
            # (a stuck output stage). No more heartbeats go out: its watchdog is the
            # last word, and the record and the caller say so.
            why = (
                f"the unit acknowledged STOP but its output is still on ({State(state).name}); "
                "no more heartbeats are sent, so its watchdog turns output off; do not use it"
            )
            self._record("unit_mismatch", {"detail": why}, now=now)
            self._pending_fault = why
            stop.outcome, stop.detail = "fault", why
            for token in self._stop_waiters:
                self._resolve(token, DeviceFault(why))
            self._stop_waiters.clear()
        if stop.acked_at is None:
            stop.acked_at = now  # output is off; its STOPPED event follows
        for token in self._stop_waiters:
            self._resolve(token, None)
        self._stop_waiters.clear()

    def _answer_amplitude(
        self, tag: AmplitudeAsked, request: Message, response: Message, now: float
    ) -> None:
        token, channel, ma = tag.token, tag.channel, tag.ma
        ua = self._unconfirmed_ua[channel].pop(tag.order, round(ma * 1000))
        if isinstance(response, Nack):  # not carried out: what was set stays set
            error = device_error(response, f"amplitude on channel {channel}")
            self._record(
                "amplitude_refused", {"channel": channel, "ma": ma, "error": str(error)}, now=now
            )
            self._resolve(token, error)
        else:
            if tag.order > self._acked_ua[channel][0]:  # (a late ACK of an older change: no)
                self._acked_ua[channel] = (tag.order, ua)
            self._resolve(token, None)
