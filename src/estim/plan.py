"""What a session should deliver: ``SessionPlan`` and its ``ChannelPlan``s (pydantic v2).

Validation here is the first of the layers that enforce SAFETY.md (the scheduler
and the unit check again): the dwell is 60 to 600 s inclusive, and every channel
passes the plausibility limits of SAFETY.md section 3 into a 500 ohm load. The
unit's own, usually narrower, limits are checked when the plan meets a unit
(``check_against``), before anything is sent.

Durations accept what a person types: ``480``, ``"8m"``, ``"90s"``, ``"1m30s"``,
``"8:00"``. Every refusal names the value and the limit.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from estim.device import UnitInfo

#: SAFETY.md section 1: the mission's dwell limits, seconds, inclusive
DWELL_MIN_S = 60.0
DWELL_MAX_S = 600.0
#: SAFETY.md section 2: the watchdog period the unit enforces, seconds
WATCHDOG_DEFAULT_S = 0.5
WATCHDOG_MIN_S = 0.2
WATCHDOG_MAX_S = 2.0
#: SAFETY.md section 3: plausibility into a 500 ohm load (IEC 60601-2-10, as quoted)
LOAD_OHM = 500.0
RMS_MAX_MA = 50.0
PULSE_ENERGY_MAX_MJ = 300.0
PEAK_VOLTAGE_MAX_V = 500.0

Waveform = Literal["biphasic_symmetric", "biphasic_asymmetric", "monophasic"]
Mode = Literal["continuous", "burst", "dense_disperse"]

_UNITS = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "sec": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|sec|h|m|s)")


def parse_duration(value: Any, what: str = "duration") -> float:
    """Seconds from 480, 480.0, "480", "8m", "90s", "1m30s", "8:00" or "0:08:00".

    Raises ValueError naming the value for anything else (text that is not a
    duration, NaN, infinity, booleans).
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip().lower(), what)
    else:
        raise ValueError(f"{what} {value!r} is not a duration")
    if not math.isfinite(seconds):
        raise ValueError(f"{what} {value!r} is not a finite duration")
    return seconds


def _parse_text(text: str, what: str) -> float:
    if not text:
        raise ValueError(f"{what} is empty; give seconds or text like 8m, 90s, 1m30s, 8:00")
    if re.fullmatch(r"[+-]?\d+(\.\d+)?", text):
        return float(text)
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}(\.\d+)?", text):
        parts = [float(p) for p in text.split(":")]
        if any(p >= 60 for p in parts[1:]):
            raise ValueError(f"{what} {text!r}: minutes and seconds after ':' must be below 60")
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + part
        return seconds
    compact = text.replace(" ", "")
    if compact and _PART.sub("", compact) == "" and _PART.search(compact):
        units = [m.group(2) for m in _PART.finditer(compact)]
        if len(units) == len(set(units)):
            return sum(float(m.group(1)) * _UNITS[m.group(2)] for m in _PART.finditer(compact))
    raise ValueError(
        f"{what} {text!r} is not a duration; give seconds or text like 8m, 90s, 1m30s, 8:00"
    )


def format_duration(seconds: float) -> str:
    """8m, 1m30s, 45s, 2.5s: the shortest exact text for a duration."""
    if seconds >= 60 and float(seconds).is_integer():
        m, s = divmod(int(seconds), 60)
        return f"{m}m{s}s" if s else f"{m}m"
    return f"{seconds:g}s"


def _dwell(value: Any) -> float:
    seconds = parse_duration(value, "dwell")
    if not DWELL_MIN_S <= seconds <= DWELL_MAX_S:
        shown = f"{value!r}" if isinstance(value, str) else f"{seconds:g} s"
        raise ValueError(
            f"dwell {shown} is outside 60-600 s (1 to 10 minutes); choose a dwell in that range"
        )
    return seconds


def _ramp(value: Any) -> float:
    seconds = parse_duration(value, "ramp")
    if seconds < 0:
        raise ValueError(f"ramp {value!r} is negative")
    return seconds


Dwell = Annotated[float, BeforeValidator(_dwell)]
Ramp = Annotated[float, BeforeValidator(_ramp)]


def _finite_positive(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} {value!r} must be a positive number")
    return value


class ChannelPlan(BaseModel):
    """One channel: where, how and how strong."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    channel: int = Field(ge=1, le=8, description="channel number on the unit, from 1")
    frequency_hz: float = Field(description="pulse rate; dense-disperse: the first rate")
    pulse_width_us: int = Field(ge=1, le=65535, description="width of one phase, microseconds")
    amplitude_ma: float = Field(description="target peak amplitude, milliamps")
    waveform: Waveform = "biphasic_symmetric"
    mode: Mode = "continuous"
    alt_frequency_hz: float | None = Field(
        default=None, description="dense-disperse: the second rate; burst: the burst rate"
    )
    switch_s: float | None = Field(
        default=None, description="dense-disperse: time on each rate; burst: burst length"
    )

    @field_validator("frequency_hz", "amplitude_ma")
    @classmethod
    def _positive(cls, value: float, info: Any) -> float:
        return _finite_positive(info.field_name, value)

    @field_validator("alt_frequency_hz", "switch_s")
    @classmethod
    def _optional_positive(cls, value: float | None, info: Any) -> float | None:
        return None if value is None else _finite_positive(info.field_name, value)

    @model_validator(mode="after")
    def _mode_fields(self) -> ChannelPlan:
        needs = self.mode != "continuous"
        if needs and (self.alt_frequency_hz is None or self.switch_s is None):
            raise ValueError(
                f"channel {self.channel}: mode {self.mode} needs alt_frequency_hz and switch_s"
            )
        if not needs and (self.alt_frequency_hz is not None or self.switch_s is not None):
            raise ValueError(
                f"channel {self.channel}: alt_frequency_hz and switch_s belong to burst "
                "and dense_disperse modes, not continuous"
            )
        for problem in self.plausibility_problems():
            raise ValueError(problem)
        return self

    # -- SAFETY.md section 3 ---------------------------------------------------------

    @property
    def highest_rate_hz(self) -> float:
        return max(self.frequency_hz, self.alt_frequency_hz or 0.0)

    @property
    def phases(self) -> int:
        return 1 if self.waveform == "monophasic" else 2

    @property
    def rms_ma(self) -> float:
        """r.m.s. current at the highest rate (conservative for burst and
        dense-disperse): I_peak * sqrt(phases * phase_width * f)."""
        duty = self.phases * self.pulse_width_us * 1e-6 * self.highest_rate_hz
        return self.amplitude_ma * math.sqrt(duty)

    @property
    def pulse_energy_mj(self) -> float:
        current = self.amplitude_ma / 1000
        return current * current * LOAD_OHM * self.phases * self.pulse_width_us * 1e-6 * 1000

    @property
    def peak_voltage_v(self) -> float:
        return self.amplitude_ma / 1000 * LOAD_OHM

    def plausibility_problems(self) -> list[str]:
        ch = f"channel {self.channel}"
        problems = []
        if self.phases * self.pulse_width_us * 1e-6 * self.highest_rate_hz >= 1.0:
            problems.append(
                f"{ch}: {self.pulse_width_us} us pulses at {self.highest_rate_hz:g} Hz overlap"
            )
        if self.rms_ma > RMS_MAX_MA:
            problems.append(
                f"{ch}: {self.rms_ma:.1f} mA r.m.s. into {LOAD_OHM:g} ohm exceeds {RMS_MAX_MA:g} mA "
                "(SAFETY.md 3); lower amplitude, pulse width or frequency"
            )
        if self.pulse_energy_mj > PULSE_ENERGY_MAX_MJ:
            problems.append(
                f"{ch}: pulse energy {self.pulse_energy_mj:.0f} mJ exceeds {PULSE_ENERGY_MAX_MJ:g} mJ"
            )
        if self.peak_voltage_v > PEAK_VOLTAGE_MAX_V:
            problems.append(
                f"{ch}: peak voltage {self.peak_voltage_v:.0f} V into {LOAD_OHM:g} ohm exceeds "
                f"{PEAK_VOLTAGE_MAX_V:g} V"
            )
        return problems

    def limit_problems(self, info: UnitInfo) -> list[str]:
        """Why the unit ``info`` describes would refuse this channel (empty if none)."""
        ch = f"channel {self.channel}"
        out = []
        if self.channel > info.channels:
            out.append(f"{ch} does not exist on this unit (it has {info.channels})")
        if self.waveform not in info.waveforms:
            out.append(f"{ch}: waveform {self.waveform} is not supported by this unit")
        if self.mode not in info.modes:
            out.append(f"{ch}: mode {self.mode} is not supported by this unit")
        for label, value in (
            ("frequency", self.frequency_hz),
            ("alt frequency", self.alt_frequency_hz),
        ):
            if value is not None and not info.frequency_min_hz <= value <= info.frequency_max_hz:
                out.append(
                    f"{ch}: {label} {value:g} Hz is outside the unit's "
                    f"{info.frequency_min_hz:g}-{info.frequency_max_hz:g} Hz"
                )
        if not info.pulse_width_min_us <= self.pulse_width_us <= info.pulse_width_max_us:
            out.append(
                f"{ch}: pulse width {self.pulse_width_us} us is outside the unit's "
                f"{info.pulse_width_min_us}-{info.pulse_width_max_us} us"
            )
        if self.amplitude_ma > info.amplitude_max_ma:
            out.append(
                f"{ch}: amplitude {self.amplitude_ma:g} mA is above the unit's maximum "
                f"{info.amplitude_max_ma:g} mA"
            )
        elif not _on_step(self.amplitude_ma, info.amplitude_step_ma):
            out.append(
                f"{ch}: amplitude {self.amplitude_ma:g} mA is not a multiple of the unit's "
                f"step {info.amplitude_step_ma:g} mA"
            )
        return out


def _on_step(value_ma: float, step_ma: float) -> bool:
    steps = value_ma / step_ma
    return abs(steps - round(steps)) < 1e-6


class SessionPlan(BaseModel):
    """A whole session: how long, how fast to ramp, which channels, and for whom."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dwell: Dwell = Field(description="seconds of stimulation, 60 to 600 inclusive")
    ramp: Ramp = Field(default=5.0, description="seconds of ramp at the start and at the end")
    channels: list[ChannelPlan] = Field(min_length=1, max_length=8)
    watchdog: float = Field(
        default=WATCHDOG_DEFAULT_S,
        ge=WATCHDOG_MIN_S,
        le=WATCHDOG_MAX_S,
        description="seconds of host silence after which the unit turns output off",
    )
    patient_ref: str | None = Field(
        default=None, max_length=200, description="opaque reference, never a name"
    )
    clinician: str | None = Field(default=None, max_length=200)
    site: str | None = Field(default=None, max_length=200, description="e.g. left vastus lateralis")
    condition: str | None = Field(default=None, max_length=200)
    notes: str | None = Field(default=None, max_length=4000)

    @model_validator(mode="after")
    def _whole_plan(self) -> SessionPlan:
        numbers = [c.channel for c in self.channels]
        duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
        if duplicates:
            raise ValueError(f"channel {duplicates[0]} appears more than once in the plan")
        if 2 * self.ramp > self.dwell:
            raise ValueError(
                f"ramp {format_duration(self.ramp)} is more than half the dwell "
                f"{format_duration(self.dwell)}; the start and end ramps must fit in the dwell"
            )
        return self

    def limit_problems(self, info: UnitInfo) -> list[str]:
        """Why the unit ``info`` describes would refuse this plan (empty if none)."""
        out = []
        if not info.dwell_min_s <= self.dwell <= info.dwell_max_s:
            out.append(
                f"dwell {format_duration(self.dwell)} is outside the unit's "
                f"{format_duration(info.dwell_min_s)}-{format_duration(info.dwell_max_s)}"
            )
        if self.ramp > info.ramp_max_s:
            out.append(
                f"ramp {format_duration(self.ramp)} is longer than the unit's {info.ramp_max_s:g} s"
            )
        if not info.watchdog_min_s <= self.watchdog <= info.watchdog_max_s:
            out.append(
                f"watchdog {self.watchdog:g} s is outside the unit's "
                f"{info.watchdog_min_s:g}-{info.watchdog_max_s:g} s"
            )
        for channel in self.channels:
            out += channel.limit_problems(info)
            slowest_ramp = channel.amplitude_ma / info.slew_max_ma_per_s
            if self.ramp + 1e-9 < slowest_ramp:
                out.append(
                    f"channel {channel.channel}: a ramp of {self.ramp:g} s to {channel.amplitude_ma:g} mA "
                    f"is faster than the unit's {info.slew_max_ma_per_s:g} mA/s; use a ramp of at "
                    f"least {math.ceil(slowest_ramp * 10) / 10:g} s"
                )
        return out
