"""What a session should deliver: ``SessionPlan`` and its ``ChannelPlan``s (pydantic v2).

Validation here is the first of the layers that enforce SAFETY.md (the limits
authority, ``estim.limits``, checks every plan again against the unit and the
clinic before anything is sent, and every live change; the unit checks again):
the dwell is 60 to 600 s inclusive, and every channel passes the plausibility
limits of SAFETY.md section 3 into a 500 ohm load.

One plan, one schema: ``schemas/session-plan.schema.json`` is generated from these
models and accepts exactly what they accept, field by field. Each number's bounds are
written once (``_number``) and give both the check and the schema; durations take
the grammar of ``estim.durations.PLAN_DURATION_GRAMMAR``, whose in-range strings are
one regular expression. What no JSON Schema can judge (a product or a comparison of
two fields: the ramp against the dwell, and SAFETY.md 3's envelope; a number off the
wire's grid, PROTOCOL.md 2) is said in the schema's description and shown by the
corpus in ``schemas/session-plan.corpus.json``.

What is judged is what is sent and recorded: every number the wire carries as a whole
number of units (tenths of a hertz, microamps, microseconds, milliseconds) must be one,
and is kept as that exact value; float noise (2.0999999999999996) is taken as the grid
value, anything else off the grid (4.26 Hz) is refused, naming the channel and field.

A refused plan raises estim's own errors, one line each: ``DwellLimitError`` for the
dwell, ``OutputLimitError`` for what reaches the patient (amplitude, rate, pulse
width, the envelope), ``PlanError`` for the rest; all are ``ValueError``s. Used as a
field of another pydantic model (a request body, ``SessionRecord.plan``), the same
words arrive inside that model's ``ValidationError`` (pydantic turns a ValueError
raised while validating into one), so an HTTP API answers 422, not 500.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic.config import JsonDict
from typing_extensions import Self

from estim.durations import (
    duration_pattern,
    format_duration,
    parse_duration,
    plan_duration_seconds,
)
from estim.errors import DwellLimitError, OutputLimitError, PlanError
from estim.safety import (
    DHZ_PER_HZ,
    DWELL_MAX_S,
    DWELL_MIN_S,
    LOAD_OHM,
    MS_PER_S,
    PEAK_VOLTAGE_MAX_V,
    UA_PER_MA,
    WATCHDOG_DEFAULT_S,
    WATCHDOG_MAX_S,
    WATCHDOG_MIN_S,
    as_float,
    exact,
    finite,
    off_wire,
    on_wire,
    pulse_problems,
    quoted,
    shown,
)

Waveform = Literal["biphasic_symmetric", "biphasic_asymmetric", "monophasic"]
Mode = Literal["continuous", "burst", "dense_disperse"]

#: SAFETY.md 3's peak voltage into 500 ohm alone bounds the amplitude: 1000 mA
AMPLITUDE_MAX_MA = PEAK_VOLTAGE_MAX_V / LOAD_OHM * 1000
#: two phases of at least 1 us must fit in one period (PROTOCOL.md 5.1): below 500 kHz
RATE_BELOW_HZ = 1e6 / 2
PULSE_WIDTH_MAX_US = 65535
CHANNELS_MAX = 8
#: the longest ramp: twice it must fit in the longest dwell
RAMP_MAX_S = DWELL_MAX_S / 2

# --- durations ------------------------------------------------------------------------------


def _duration(
    value: Any,
    what: str,
    low: float,
    high: float,
    error: type[PlanError],
    advice: str,
) -> float:
    """Seconds from a number or from text in the plan grammar, within low..high and
    a whole number of milliseconds (START carries milliseconds, PROTOCOL.md 2)."""
    if isinstance(value, str):
        shown_value = quoted(value)
        exact_s = plan_duration_seconds(value)
        if exact_s is None:
            try:
                seconds = parse_duration(value, what)
            except ValueError as err:
                raise error(str(err)) from None
            if low <= seconds <= high:
                raise error(
                    f"{what} {shown_value} is not written as a plan takes it; write "
                    "seconds (480) or text like 8m, 90s, 1m30s, 8:00"
                )
        elif low <= exact_s <= high:  # exact: a float bound compares as its exact value
            if (exact_s * MS_PER_S).denominator != 1 and not _RECORDED.get():
                raise error(
                    f"{what} {shown_value} is not a multiple of {1 / MS_PER_S:g} s, "
                    "the unit's resolution"
                )
            try:
                return float(exact_s)
            except OverflowError:
                raise error(f"{what} {shown_value} is longer than any session") from None
    else:
        if isinstance(value, int) and not isinstance(value, bool) and not low <= value <= high:
            raise error(f"{what} {shown(value)} s {advice}")  # before float(): any size
        try:
            seconds = parse_duration(value, what)
        except ValueError as err:
            raise error(str(err)) from None
        shown_value = f"{shown(seconds)} s"
        if low <= seconds <= high:
            grid = on_wire(seconds, MS_PER_S)
            if grid is not None:
                return grid
            if _RECORDED.get():
                return seconds
            raise error(off_wire(what, value, MS_PER_S, "s"))
    raise error(f"{what} {shown_value} {advice}")


_RECORDED: ContextVar[bool] = ContextVar("estim_plan_as_recorded", default=False)


@contextmanager
def as_recorded() -> Iterator[None]:
    """Validate, inside this block, plans a journal already holds: a number an older
    estim took off the wire's grid is read as it was stored (a record is not rewritten,
    and an old journal stays readable). Never for a plan that is to be sent."""
    token = _RECORDED.set(True)
    try:
        yield
    finally:
        _RECORDED.reset(token)


def _dwell(value: Any) -> float:
    return _duration(
        value,
        "dwell",
        DWELL_MIN_S,
        DWELL_MAX_S,
        DwellLimitError,
        "is outside 60-600 s (1 to 10 minutes); choose a dwell in that range",
    )


def _ramp(value: Any) -> float:
    # no upper bound here: above half the dwell the whole-plan check says so in words
    return _duration(value, "ramp", 0.0, math.inf, PlanError, "is negative; give 0 s or more")


def _duration_schema(low_s: float, high_s: float) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": low_s, "maximum": high_s},
                {
                    "type": "string",
                    "pattern": duration_pattern(int(low_s) // 60, int(high_s) // 60),
                },
            ],
        }
    )


Dwell = Annotated[
    float,
    BeforeValidator(_dwell),
    _duration_schema(DWELL_MIN_S, DWELL_MAX_S),
]
Ramp = Annotated[
    float,
    BeforeValidator(_ramp),
    _duration_schema(0.0, RAMP_MAX_S),
]

# --- numbers: each bound written once, for the check and for the schema ----------------------


def _number(
    what: str,
    *,
    integer: bool = False,
    above: float | None = None,
    minimum: float | None = None,
    below: float | None = None,
    maximum: float | None = None,
    unit: str = "",
    per: int | None = None,
    error: type[PlanError] = OutputLimitError,
) -> tuple[Callable[[Any, ValidationInfo], Any], WithJsonSchema]:
    """A JSON number (never text, never a boolean), finite, within its bounds; the same
    bounds as the schema's ``minimum``/``exclusiveMinimum``/... for that field. With
    ``per``, a whole number of 1/per units, as the wire carries it (PROTOCOL.md 2):
    the number kept is that exact grid value (2.1 for 2.0999999999999996), so what is
    judged is what is sent and recorded; a number off the grid is refused."""
    schema: dict[str, Any] = {"type": "integer" if integer else "number"}
    for key, bound in (
        ("exclusiveMinimum", above),
        ("minimum", minimum),
        ("exclusiveMaximum", below),
        ("maximum", maximum),
    ):
        if bound is not None:
            schema[key] = bound
    suffix = f" {unit}" if unit else ""

    def check(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "a whole number" if integer else "a number"
            given = quoted(value) if isinstance(value, str) else repr(value)
            raise error(
                f"{what} {given} is not {kind}; give {kind}" + (f" ({unit})" if unit else "")
            )
        if not finite(value):
            raise error(f"{what} {value!r} is not a finite number")
        if integer and isinstance(value, float) and value != int(value):
            raise error(f"{what} {value!r} must be a whole number")
        if above is not None and value <= above:
            if above == 0:
                raise error(f"{what} {exact(value)} must be a positive number")
            raise error(f"{what} {shown(value)}{suffix} must be above {above:g}{suffix}")
        if minimum is not None and value < minimum:
            raise error(
                f"{what} {shown(value)}{suffix} is below {minimum:g}{suffix}, the least allowed"
            )
        if below is not None and value >= below:
            raise error(f"{what} {shown(value)}{suffix} must be below {below:g}{suffix}")
        if maximum is not None and value > maximum:
            raise error(
                f"{what} {shown(value)}{suffix} is above {maximum:g}{suffix}, the most allowed"
            )
        if integer:
            return int(value)
        if not math.isfinite(as_float(value)):  # no bound above it, and no float holds it
            raise error(f"{what} {shown(value)}{suffix} is too large a number")
        grid = None if per is None else on_wire(value, per)
        if grid is not None:
            return grid
        if per is None or _RECORDED.get():
            return float(value)
        data = getattr(info, "data", None)
        channel = data.get("channel") if isinstance(data, dict) else None
        where = f"channel {channel}: " if channel is not None else ""
        raise error(where + off_wire(what, value, per, unit))

    return check, WithJsonSchema(schema)


_CHANNEL = _number("channel", integer=True, minimum=1, maximum=CHANNELS_MAX, error=PlanError)
ChannelNumber = Annotated[int, BeforeValidator(_CHANNEL[0]), _CHANNEL[1]]
_FREQ = _number("frequency_hz", above=0, below=RATE_BELOW_HZ, unit="Hz", per=DHZ_PER_HZ)
Frequency = Annotated[float, BeforeValidator(_FREQ[0]), _FREQ[1]]
_ALT = _number("alt_frequency_hz", above=0, below=RATE_BELOW_HZ, unit="Hz", per=DHZ_PER_HZ)
AltFrequency = Annotated[float, BeforeValidator(_ALT[0]), _ALT[1]]
_PW = _number("pulse_width_us", integer=True, minimum=1, maximum=PULSE_WIDTH_MAX_US, unit="us")
PulseWidth = Annotated[int, BeforeValidator(_PW[0]), _PW[1]]
_AMP = _number("amplitude_ma", above=0, maximum=AMPLITUDE_MAX_MA, unit="mA", per=UA_PER_MA)
Amplitude = Annotated[float, BeforeValidator(_AMP[0]), _AMP[1]]
_SWITCH = _number("switch_s", above=0, unit="s", per=MS_PER_S, error=PlanError)
SwitchTime = Annotated[float, BeforeValidator(_SWITCH[0]), _SWITCH[1]]
_WATCHDOG = _number(
    "watchdog",
    minimum=WATCHDOG_MIN_S,
    maximum=WATCHDOG_MAX_S,
    unit="s",
    per=MS_PER_S,
    error=PlanError,
)
Watchdog = Annotated[float, BeforeValidator(_WATCHDOG[0]), _WATCHDOG[1]]


def _text(most: int) -> tuple[Callable[[Any, ValidationInfo], Any], WithJsonSchema]:
    """Optional free text of at most ``most`` characters (JSON Schema counts them alike)."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise PlanError(f"{info.field_name} {value!r} is not text; give text or leave it out")
        if len(value) > most:
            raise PlanError(
                f"{info.field_name} is {len(value)} characters long; give at most {most} characters"
            )
        return value

    schema = {"anyOf": [{"type": "string", "maxLength": most}, {"type": "null"}]}
    return check, WithJsonSchema(schema)


_TEXT200, _TEXT4000 = _text(200), _text(4000)
Text200 = Annotated[str | None, BeforeValidator(_TEXT200[0]), _TEXT200[1]]
Text4000 = Annotated[str | None, BeforeValidator(_TEXT4000[0]), _TEXT4000[1]]


# --- refusals as estim's own errors ----------------------------------------------------------


def plan_error(err: ValidationError, model: str = "plan") -> PlanError:
    """The first problem in ``err`` as estim's error, one line.

    A problem one of estim's checks found comes back as the very error it raised
    (``DwellLimitError``, ``OutputLimitError``, ``PlanError``); one that pydantic's
    own structure found (a missing or unknown field, a list where an object belongs)
    becomes a ``PlanError`` naming the field. An HTTP API that takes a plan inside
    its own request model can pass that model's ``ValidationError`` here too."""
    problems = err.errors()
    first = problems[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, PlanError):
        return cause
    where = ".".join(str(p) for p in first.get("loc", ()))
    kind = first.get("type", "")
    if kind == "missing":
        text = f"{model}: {where} is missing; see schemas/session-plan.schema.json"
    elif kind == "extra_forbidden":
        text = f"{model}: unknown field {where!r}; see schemas/session-plan.schema.json"
    else:
        message = str(first.get("msg", err)).removeprefix("Value error, ")
        text = f"{model}: {where}: {message}" if where else f"{model}: {message}"
    return PlanError(" ".join(text.split()))


class _Refusing(BaseModel):
    """Construction and ``model_validate*`` raise estim's errors, not pydantic's."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise plan_error(err, type(self).__name__) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as err:
            raise plan_error(err, cls.__name__) from None

    @classmethod
    def model_validate_json(cls, json_data: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as err:
            raise plan_error(err, cls.__name__) from None


# --- the models ---------------------------------------------------------------------------------

_CHANNEL_RULES: JsonDict = {
    "allOf": [
        {
            "if": {"properties": {"mode": {"const": "continuous"}}},
            "then": {
                "properties": {"alt_frequency_hz": {"type": "null"}, "switch_s": {"type": "null"}}
            },
            "else": {
                "required": ["alt_frequency_hz", "switch_s"],
                "properties": {
                    "alt_frequency_hz": {"type": "number"},
                    "switch_s": {"type": "number"},
                },
            },
        }
    ]
}


class ChannelPlan(_Refusing):
    """One channel: where, how and how strong. Burst and dense_disperse modes need
    alt_frequency_hz and switch_s; continuous takes neither. SAFETY.md 3's envelope
    (pulses that overlap, r.m.s. current, pulse energy) multiplies fields together:
    the model judges it, this schema cannot."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_CHANNEL_RULES)

    channel: ChannelNumber = Field(description="channel number on the unit, 1 to 8")
    frequency_hz: Frequency = Field(
        description="pulse rate in Hz, above 0 and below 500000, a multiple of 0.1 Hz (the "
        "unit's resolution); dense-disperse: the first rate"
    )
    pulse_width_us: PulseWidth = Field(description="width of one phase, whole microseconds")
    amplitude_ma: Amplitude = Field(
        description="target peak amplitude in mA, above 0; at most 1000 (500 V into 500 ohm); "
        "a multiple of 0.001 mA (1 uA, the unit's resolution)"
    )
    waveform: Waveform = "biphasic_symmetric"
    mode: Mode = "continuous"
    alt_frequency_hz: AltFrequency | None = Field(
        default=None,
        description="dense-disperse: the second rate; burst: the burst rate; a multiple of 0.1 Hz",
    )
    switch_s: SwitchTime | None = Field(
        default=None,
        description="dense-disperse: time on each rate; burst: burst length; whole milliseconds",
    )

    @model_validator(mode="after")
    def _mode_fields(self) -> ChannelPlan:
        needs = self.mode != "continuous"
        if needs and (self.alt_frequency_hz is None or self.switch_s is None):
            raise PlanError(
                f"channel {self.channel}: mode {self.mode} needs alt_frequency_hz and switch_s"
            )
        if not needs and (self.alt_frequency_hz is not None or self.switch_s is not None):
            raise PlanError(
                f"channel {self.channel}: alt_frequency_hz and switch_s belong to burst "
                "and dense_disperse modes, not continuous"
            )
        for problem in self.plausibility_problems():
            raise OutputLimitError(problem)
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


def _plan_schema(schema: dict[str, Any]) -> None:
    schema["allOf"] = [  # each channel number at most once (2020-12: maxContains)
        {
            "contains": {"required": ["channel"], "properties": {"channel": {"const": n}}},
            "minContains": 0,
            "maxContains": 1,
        }
        for n in range(1, CHANNELS_MAX + 1)
    ]
    schema["properties"]["channels"]["allOf"] = schema.pop("allOf")


class SessionPlan(_Refusing):
    """A whole session: how long, how fast to ramp, which channels, and for whom.

    This schema accepts exactly the plans estim accepts, except three kinds of plan it
    cannot judge, which estim refuses: a ramp longer than half the dwell; a channel
    outside SAFETY.md 3's envelope into 500 ohm (two phases that overlap: 2 x
    pulse_width_us x rate >= 1e6; more than 50 mA r.m.s.: amplitude_ma x sqrt(phases
    x pulse_width_us x 1e-6 x rate) > 50, where rate is the higher of the two rates
    and phases 1 for monophasic, else 2; more than 300 mJ a pulse); and a number off
    the unit's resolution (the wire carries whole numbers: a rate in tenths of a hertz,
    an amplitude in microamps, a time in milliseconds; a multipleOf of 0.1 would judge
    in binary floating point, where 4.3 is not a multiple of 0.1; a number within
    float noise of the grid is taken as the grid value). See
    schemas/session-plan.corpus.json."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_plan_schema)

    dwell: Dwell = Field(
        description="stimulation time, 60 to 600 s inclusive, whole milliseconds: seconds as a "
        "number, or text: "
        "480, 90s, 8m, 1.5m, 1m30s, 1 min 30 sec, 8:00 (units s, sec, m, min in any case)"
    )
    ramp: Ramp = Field(
        default=5.0,
        description="ramp time at the start and again at the end, written as the dwell is; "
        "at most half the dwell (a rule between two fields that this schema cannot judge)",
    )
    channels: tuple[ChannelPlan, ...] = Field(min_length=1, max_length=CHANNELS_MAX)
    watchdog: Watchdog = Field(
        default=WATCHDOG_DEFAULT_S,
        description="seconds of host silence after which the unit turns output off, 0.2 to 2, "
        "whole milliseconds",
    )
    patient_ref: Text200 = Field(default=None, description="opaque reference, never a name")
    clinician: Text200 = Field(default=None)
    site: Text200 = Field(default=None, description="e.g. left vastus lateralis")
    condition: Text200 = Field(default=None)
    notes: Text4000 = Field(default=None)

    @model_validator(mode="before")
    @classmethod
    def _channel_count(cls, data: Any) -> Any:
        channels = data.get("channels") if isinstance(data, dict) else None
        if isinstance(channels, list | tuple) and not 1 <= len(channels) <= CHANNELS_MAX:
            raise PlanError(
                f"the plan has {len(channels)} channels; give 1 to {CHANNELS_MAX}, each once"
            )
        return data

    @model_validator(mode="after")
    def _whole_plan(self) -> SessionPlan:
        numbers = [c.channel for c in self.channels]
        duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
        if duplicates:
            raise PlanError(f"channel {duplicates[0]} appears more than once in the plan")
        if 2 * self.ramp > self.dwell:
            raise PlanError(
                f"ramp {format_duration(self.ramp)} is more than half the dwell "
                f"{format_duration(self.dwell)}; the start and end ramps must fit in the dwell"
            )
        return self
