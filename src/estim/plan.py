"""What a session should deliver: ``SessionPlan`` and its ``ChannelPlan``s (pydantic v2).

Validation here is the first of the layers that enforce SAFETY.md (the limits
authority, ``estim.limits``, checks every plan again against the unit and the
clinic before anything is sent, and every live change; the unit checks again):
the dwell is 60 to 600 s inclusive, and every channel passes the plausibility
limits of SAFETY.md section 3 into a 500 ohm load.

Durations accept what a person types: ``480``, ``"8m"``, ``"90s"``, ``"1m30s"``,
``"8:00"``. Every refusal names the value and the limit.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from estim.durations import format_duration, parse_duration
from estim.safety import (
    DWELL_MAX_S,
    DWELL_MIN_S,
    WATCHDOG_DEFAULT_S,
    WATCHDOG_MAX_S,
    WATCHDOG_MIN_S,
    pulse_problems,
)

Waveform = Literal["biphasic_symmetric", "biphasic_asymmetric", "monophasic"]
Mode = Literal["continuous", "burst", "dense_disperse"]


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

    def plausibility_problems(self) -> list[str]:
        """SAFETY.md section 3 at the planned amplitude (see ``estim.limits``)."""
        return pulse_problems(
            self.channel,
            frequency_hz=self.frequency_hz,
            alt_frequency_hz=self.alt_frequency_hz,
            pulse_width_us=self.pulse_width_us,
            amplitude_ma=self.amplitude_ma,
            waveform=self.waveform,
        )


class SessionPlan(BaseModel):
    """A whole session: how long, how fast to ramp, which channels, and for whom."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dwell: Dwell = Field(description="seconds of stimulation, 60 to 600 inclusive")
    ramp: Ramp = Field(default=5.0, description="seconds of ramp at the start and at the end")
    channels: tuple[ChannelPlan, ...] = Field(min_length=1, max_length=8)
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
