"""One limits authority: SAFETY.md's envelope, intersected with the unit's own
limits (DEVICE_INFO) and the clinic's config.

``Limits(unit, clinic)`` is asked for a plan before anything is sent *and* for
every live change (the API, the live view's keys, a preset), so no path to the
unit can skip a limit. The unit checks again (PROTOCOL.md 5.1); the numbers that
are the mission's own (a dwell of 60-600 s, SAFETY.md 1) hold whatever a unit
reports. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from estim.durations import format_duration
from estim.errors import DwellLimitError, OutputLimitError
from estim.safety import (
    DHZ_PER_HZ,
    MS_PER_S,
    SWITCH_MAX_S,
    UA_PER_MA,
    WATCHDOG_MAX_S,
    WATCHDOG_MIN_S,
    as_float,
    dwell_problem,
    exact,
    finite,
    off_wire,
    on_step,
    plausible_max_ma,
    pulse_problems,
    quoted,
    shown,
    wire_count,
)

if TYPE_CHECKING:
    from estim.info import UnitInfo
    from estim.plan import ChannelPlan, SessionPlan


@dataclass(frozen=True)
class ClinicLimits:
    """Limits a clinic narrows in its config file; None means "as the unit and
    SAFETY.md allow"."""

    amplitude_max_ma: float | None = None
    frequency_min_hz: float | None = None
    frequency_max_hz: float | None = None
    pulse_width_max_us: int | None = None
    dwell_min: float | None = None
    dwell_max: float | None = None
    ramp_min: float | None = None

    def plan_problems(self, plan: SessionPlan) -> list[str]:
        out = []
        dwell, ramp = format_duration(plan.dwell), format_duration(plan.ramp)
        if self.dwell_min is not None and plan.dwell < self.dwell_min:
            out.append(
                f"dwell {dwell} is below the clinic's minimum {format_duration(self.dwell_min)}"
            )
        if self.dwell_max is not None and plan.dwell > self.dwell_max:
            out.append(
                f"dwell {dwell} is above the clinic's maximum {format_duration(self.dwell_max)}"
            )
        if self.ramp_min is not None and plan.ramp < self.ramp_min:
            out.append(
                f"ramp {ramp} is below the clinic's minimum {format_duration(self.ramp_min)}"
            )
        for ch in plan.channels:
            name = f"channel {ch.channel}"
            problem = self.amplitude_problem(ch.channel, ch.amplitude_ma)
            if problem:
                out.append(problem)
            for hz in (ch.frequency_hz, ch.alt_frequency_hz):
                if hz is None:
                    continue
                if self.frequency_min_hz is not None and hz < self.frequency_min_hz:
                    out.append(
                        f"{name}: {shown(hz)} Hz is below the clinic's minimum "
                        f"{self.frequency_min_hz:g} Hz"
                    )
                if self.frequency_max_hz is not None and hz > self.frequency_max_hz:
                    out.append(
                        f"{name}: {shown(hz)} Hz is above the clinic's maximum "
                        f"{self.frequency_max_hz:g} Hz"
                    )
            if self.pulse_width_max_us is not None and ch.pulse_width_us > self.pulse_width_max_us:
                out.append(
                    f"{name}: {exact(ch.pulse_width_us)} us is above the clinic's maximum "
                    f"{self.pulse_width_max_us} us"
                )
        return out

    def amplitude_problem(self, channel: int, ma: float) -> str | None:
        if self.amplitude_max_ma is not None and ma > self.amplitude_max_ma:
            return (
                f"channel {channel}: amplitude {shown(ma)} mA is above the clinic's maximum "
                f"{self.amplitude_max_ma:g} mA"
            )
        return None


class Limits:
    """SAFETY.md ∩ the unit's DEVICE_INFO ∩ the clinic's config."""

    def __init__(self, unit: UnitInfo, clinic: ClinicLimits | None = None) -> None:
        self.unit = unit
        self.clinic = clinic or ClinicLimits()

    # -- a whole plan ------------------------------------------------------------------

    def plan_problems(self, plan: SessionPlan) -> list[str]:
        """Why this plan must not be sent, dwell problems first (empty if none).

        Everything is checked again here, even what the plan model checks, since
        a plan can be built without validation (``model_construct``)."""
        unit = self.unit
        dwell = [p for p in (dwell_problem(plan.dwell),) if p]
        if not dwell and wire_count(plan.dwell, MS_PER_S) is None:
            dwell.append(off_wire("dwell", plan.dwell, MS_PER_S, "s"))
        if not dwell and not unit.dwell_min_s <= plan.dwell <= unit.dwell_max_s:
            dwell.append(
                f"dwell {format_duration(plan.dwell)} is outside the unit's range, "
                f"{format_duration(unit.dwell_min_s)} to {format_duration(unit.dwell_max_s)}"
            )
        out: list[str] = []
        if not (finite(plan.ramp) and plan.ramp >= 0 and 2 * plan.ramp <= plan.dwell):
            out.append(f"ramp {exact(plan.ramp)} s must be 0 to half the dwell")
        elif wire_count(plan.ramp, MS_PER_S) is None:
            out.append(off_wire("ramp", plan.ramp, MS_PER_S, "s"))
        elif plan.ramp > unit.ramp_max_s:
            out.append(
                f"ramp {format_duration(plan.ramp)} is longer than the unit's {unit.ramp_max_s:g} s"
            )
        if not WATCHDOG_MIN_S <= plan.watchdog <= WATCHDOG_MAX_S:
            out.append(
                f"watchdog {exact(plan.watchdog)} s is outside "
                f"{WATCHDOG_MIN_S:g}-{WATCHDOG_MAX_S:g} s"
            )
        elif wire_count(plan.watchdog, MS_PER_S) is None:
            out.append(off_wire("watchdog", plan.watchdog, MS_PER_S, "s"))
        elif not unit.watchdog_min_s <= plan.watchdog <= unit.watchdog_max_s:
            out.append(
                f"watchdog {plan.watchdog:g} s is outside the unit's "
                f"{unit.watchdog_min_s:g}-{unit.watchdog_max_s:g} s"
            )
        numbers = [c.channel for c in plan.channels]
        if not numbers or len(set(numbers)) != len(numbers):
            out.append(f"channels {numbers} must be one or more different channels")
        for channel in plan.channels:
            out += self.channel_problems(channel)
            if 0 < channel.amplitude_ma <= unit.amplitude_max_ma and unit.slew_max_ma_per_s > 0:
                slowest_ramp = channel.amplitude_ma / unit.slew_max_ma_per_s
                if as_float(plan.ramp) + 1e-9 < slowest_ramp:
                    out.append(
                        f"channel {channel.channel}: a ramp of {shown(plan.ramp)} s to "
                        f"{channel.amplitude_ma:g} mA is faster than the unit's "
                        f"{unit.slew_max_ma_per_s:g} mA/s; use a ramp of at least "
                        f"{math.ceil(slowest_ramp * 10) / 10:g} s"
                    )
        out += self.clinic.plan_problems(plan)
        return dwell + out

    def check_plan(self, plan: SessionPlan) -> None:
        """Raise ``DwellLimitError`` or ``OutputLimitError`` for the first problem."""
        problems = self.plan_problems(plan)
        if problems:
            kind = DwellLimitError if problems[0].startswith("dwell") else OutputLimitError
            raise kind(problems[0])

    # -- one channel ------------------------------------------------------------------

    def channel_problems(self, channel: ChannelPlan) -> list[str]:
        """Why the unit would refuse this channel, or SAFETY.md forbids it."""
        unit = self.unit
        ch = f"channel {channel.channel}"
        out = []
        if not 1 <= channel.channel <= unit.channels:
            out.append(f"{ch} does not exist on this unit (it has {unit.channels})")
        if channel.waveform not in unit.waveforms:
            out.append(f"{ch}: waveform {channel.waveform} is not supported by this unit")
        if channel.mode not in unit.modes:
            out.append(f"{ch}: mode {channel.mode} is not supported by this unit")
        for label, value in (
            ("frequency", channel.frequency_hz),
            ("alt frequency", channel.alt_frequency_hz),
        ):
            if value is None:
                continue
            if not unit.frequency_min_hz <= value <= unit.frequency_max_hz:
                out.append(
                    f"{ch}: {label} {shown(value)} Hz is outside the unit's "
                    f"{unit.frequency_min_hz:g}-{unit.frequency_max_hz:g} Hz"
                )
            elif wire_count(value, DHZ_PER_HZ) is None:
                out.append(f"{ch}: " + off_wire(label, value, DHZ_PER_HZ, "Hz"))
        width = channel.pulse_width_us
        if not unit.pulse_width_min_us <= width <= unit.pulse_width_max_us:
            out.append(
                f"{ch}: pulse width {exact(width)} us is outside the unit's "
                f"{unit.pulse_width_min_us}-{unit.pulse_width_max_us} us"
            )
        elif width != int(width):
            out.append(f"{ch}: pulse width {exact(width)} us is not a whole number of us")
        switch = channel.switch_s
        if switch is not None and not 0 < switch <= SWITCH_MAX_S:
            out.append(
                f"{ch}: switch {shown(switch)} s is outside 0.001-{SWITCH_MAX_S:g} s, what "
                "switch_ms carries (PROTOCOL.md 5.1)"
            )
        elif switch is not None and wire_count(switch, MS_PER_S) is None:
            out.append(f"{ch}: " + off_wire("switch", switch, MS_PER_S, "s"))
        problem = self.amplitude_problem(channel, channel.amplitude_ma, live=False)
        if problem:
            out.append(problem)
        return out

    def amplitude_problem(
        self, channel: ChannelPlan, ma: float, *, live: bool = True
    ) -> str | None:
        """Why ``ma`` must not be set on ``channel`` (its frequency and pulse width
        as planned), or None. A live change may go to 0; a plan may not.

        What is judged is the whole number of microamps that would be sent
        (``sent_ma``): a value off that grid is refused, float noise is not."""
        unit = self.unit
        ch = f"channel {channel.channel}"
        if isinstance(ma, bool) or not isinstance(ma, int | float) or not finite(ma):
            given = quoted(ma) if isinstance(ma, str) else repr(ma)
            return f"{ch}: amplitude {given} is not a number of milliamps"
        if ma < 0 or (ma == 0 and not live):
            return f"{ch}: amplitude {shown(ma)} mA must be {'0 or more' if live else 'above 0'}"
        if ma > unit.amplitude_max_ma:
            return (
                f"{ch}: amplitude {shown(ma)} mA is above the unit's maximum "
                f"{unit.amplitude_max_ma:g} mA"
            )
        ua = wire_count(ma, UA_PER_MA)
        if ua is None:
            return f"{ch}: " + off_wire("amplitude", ma, UA_PER_MA, "mA")
        ma = ua / UA_PER_MA
        step_ua = wire_count(unit.amplitude_step_ma, UA_PER_MA)
        if not (ua % step_ua == 0 if step_ua else on_step(ma, unit.amplitude_step_ma)):
            return (
                f"{ch}: amplitude {ma:g} mA is not a multiple of the unit's step "
                f"{unit.amplitude_step_ma:g} mA"
            )
        clinic = self.clinic.amplitude_problem(channel.channel, ma)
        if clinic:
            return clinic
        problems = pulse_problems(
            channel.channel,
            frequency_hz=channel.frequency_hz,
            alt_frequency_hz=channel.alt_frequency_hz,
            pulse_width_us=channel.pulse_width_us,
            amplitude_ma=ma,
            waveform=channel.waveform,
        )
        return problems[0] if problems else None

    @staticmethod
    def sent_ma(ma: float) -> float:
        """The amplitude that goes to the unit for ``ma`` (one ``amplitude_problem``
        took): its whole number of microamps, the number to send and to record."""
        ua = wire_count(ma, UA_PER_MA)
        if ua is None:
            raise OutputLimitError(off_wire("amplitude", ma, UA_PER_MA, "mA"))
        return ua / UA_PER_MA

    def check_amplitude(self, channel: ChannelPlan, ma: float) -> None:
        problem = self.amplitude_problem(channel, ma)
        if problem:
            raise OutputLimitError(problem)

    def amplitude_max_ma(self, channel: ChannelPlan) -> float:
        """The highest amplitude allowed on this channel, on the unit's step: what
        the live view shows as the top of the range."""
        limits = [
            self.unit.amplitude_max_ma,
            plausible_max_ma(
                rate_hz=max(channel.frequency_hz, channel.alt_frequency_hz or 0.0),
                pulse_width_us=channel.pulse_width_us,
                waveform=channel.waveform,
            ),
        ]
        if self.clinic.amplitude_max_ma is not None:
            limits.append(self.clinic.amplitude_max_ma)
        step = self.unit.amplitude_step_ma
        steps = math.floor(min(limits) / step + 1e-9)
        return round(steps * step, 6)

    # -- the clinic's config against this unit ------------------------------------------

    def clinic_wider_than_unit(self) -> list[str]:
        """Clinic limits the unit already narrows further (the narrower one applies)."""
        unit, clinic = self.unit, self.clinic
        out = []
        pairs: list[tuple[str, float | None, float, str]] = [
            ("amplitude_max_ma", clinic.amplitude_max_ma, unit.amplitude_max_ma, "mA"),
            ("frequency_max_hz", clinic.frequency_max_hz, unit.frequency_max_hz, "Hz"),
            ("pulse_width_max_us", clinic.pulse_width_max_us, unit.pulse_width_max_us, "us"),
            ("dwell_max", clinic.dwell_max, unit.dwell_max_s, "s"),
        ]
        for key, value, unit_value, label in pairs:
            if value is not None and value > unit_value:
                out.append(
                    f"the clinic's {key} {value:g} {label} is above this unit's {unit_value:g} "
                    f"{label}; the unit's applies"
                )
        if clinic.frequency_min_hz is not None and clinic.frequency_min_hz < unit.frequency_min_hz:
            out.append(
                f"the clinic's frequency_min_hz {clinic.frequency_min_hz:g} Hz is below this unit's "
                f"{unit.frequency_min_hz:g} Hz; the unit's applies"
            )
        return out
