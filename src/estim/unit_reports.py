"""How a session's policy reads its unit: each event (output on, the ramps, a level
reached, completed, a fault, stopped, a restart) and each STATUS, checked against
what this session set (SAFETY.md 9): a unit that runs anything else, or reports a
fault, is stopped from the host; numbers from the unit that cannot be true (a
delivered time longer than output can have been on) are not believed.
"""

from __future__ import annotations

from estim.info import UnitStatus
from estim.policy_base import CLOCK_TOLERANCE, REPORT_TICK_MS, PolicyBase, fault_name
from estim.protocol import (
    OUTPUT_STATES,
    AmplitudeReached,
    Booted,
    ButtonPressed,
    Completed,
    Event,
    Fault,
    FaultRaised,
    OutputStarted,
    RampDone,
    RampDownStarted,
    Stopped,
    StopReason,
)
from estim.session_state import EndRampBegun, Host, RampFinished


class UnitReports(PolicyBase):
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
            if self.states.allows(RampFinished()):
                self.states.fire(RampFinished())
            self._record("ramp_done", now=now, unit_ms=ms)
        elif isinstance(item, RampDownStarted):
            if self.states.allows(EndRampBegun()):
                self.states.fire(EndRampBegun())
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
            if self.done:
                return
            short = self._unit_ended_early(item.delivered_ms)
            if short is not None:
                self._end("stopped", short, ended_by="unit", now=now)
            else:  # the dwell ran out first, whatever else was asked
                self._end("completed", "the unit's own deadline ended it", ended_by="unit", now=now)
        elif isinstance(item, FaultRaised):
            name = fault_name(item.fault)
            self._fault = self._fault or (item.fault, item.channel)
            self._pending_fault = f"unit fault {name}" + (
                f" on channel {item.channel}" if item.channel else ""
            )
            if item.fault == Fault.WATCHDOG and self._stalled_s:
                self._pending_fault += f": the host was stalled for {self._stalled_s:.1f} s"
            elif item.fault == Fault.WATCHDOG and self.states.host is Host.RECOVERING:
                self._pending_fault += f": its watchdog stopped output while {self._trouble}"
            self._record(
                "fault",
                {"fault": item.fault, "name": name, "channel": item.channel},
                now=now,
                unit_ms=ms,
            )
            # SAFETY.md 9: a reported fault stops the session from the host too, whatever
            # the unit does next (its STOPPED normally follows at once)
            if self.states.host not in (Host.CONFIGURING, Host.RECOVERING):
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
            if self.done:
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
            if not self.done and self.states.host is not Host.CONFIGURING:
                self._pending_fault = "the unit restarted (power cycle or reset); output is off"
                self._end("fault", self._pending_fault, ended_by=None, now=now)

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
            if self.states.host is Host.LIVE:
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
        setpoints = self._setpoints_allowed(channel)
        if setpoint_ua and setpoint_ua not in setpoints:
            shown = ", ".join(f"{ua / 1000:g}" for ua in sorted(setpoints))
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

    def _unit_ended_early(self, delivered_ms: int) -> str | None:
        """Why a COMPLETED from the unit is not a completed dwell, if it is not: the
        time it reports falls short of the dwell by more than the clocks' tolerance
        (a unit whose deadline is wrong)."""
        planned = self._dwell_ms
        if delivered_ms >= planned - planned * CLOCK_TOLERANCE - REPORT_TICK_MS:
            return None
        return (
            f"the unit reported its dwell complete after {delivered_ms / 1000:g} s of "
            f"{self.plan.dwell:g} s by its own clock: it ended output early, so the dwell "
            "was not complete"
        )

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
