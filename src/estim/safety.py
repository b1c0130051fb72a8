"""SAFETY.md's numbers, and the plausibility rule they make: pure arithmetic that
the plan model, the limits authority and the clinic config all use (a leaf module:
it imports nothing of estim's). Also the wire's resolution (PROTOCOL.md 2), which
every number judged must be on, and numbers as people give them (an int of any
size), checked and shown without an OverflowError."""

from __future__ import annotations

import math

#: SAFETY.md 1: the mission's dwell limits, seconds, inclusive
DWELL_MIN_S = 60.0
DWELL_MAX_S = 600.0
#: SAFETY.md 2: the watchdog period the unit enforces, seconds
WATCHDOG_DEFAULT_S = 0.5
WATCHDOG_MIN_S = 0.2
WATCHDOG_MAX_S = 2.0
#: SAFETY.md 3: plausibility into a 500 ohm load (IEC 60601-2-10, as quoted)
LOAD_OHM = 500.0
RMS_MAX_MA = 50.0
PULSE_ENERGY_MAX_MJ = 300.0
PEAK_VOLTAGE_MAX_V = 500.0


#: PROTOCOL.md 2: no floating point on the wire. CONFIGURE_CHANNEL, START and
#: SET_AMPLITUDE carry microamps, tenths of a hertz, microseconds and milliseconds, so
#: a number is judged, sent and recorded as a whole number of these, never rounded
#: on its way out: the unit would run what no check judged.
UA_PER_MA = 1000
DHZ_PER_HZ = 10
MS_PER_S = 1000
#: float noise is not a typo: 2.1 arrives as 2.0999999999999996 when computed (0.7 * 3);
#: within this fraction of one wire unit of a whole number of them, a value is that
#: number (far below any step a unit can make, far above a float's rounding)
WIRE_NOISE = 1e-6
#: PROTOCOL.md 5.1: switch_ms (a burst, or the time on each rate) is at most 60000
SWITCH_MAX_S = 60.0


# --- numbers as given: an int of any size is a number, and never an OverflowError -----------


def finite(value: float) -> bool:
    """``math.isfinite`` for any int too (400 digits are finite; they are only large)."""
    return isinstance(value, int) or math.isfinite(value)


def as_float(value: float) -> float:
    """``float(value)``; an int too large for a float is infinitely large here."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def shown(value: float) -> str:
    """``f"{value:g}"``, also for an int too large for a float (``1e+400``)."""
    try:
        return f"{value:g}"
    except OverflowError:  # an int: its first digits and its size (truncated, not rounded)
        digits = str(abs(int(value)))
        mantissa = f"{digits[0]}.{digits[1:6]}".rstrip("0").rstrip(".")
        return f"{'-' if value < 0 else ''}{mantissa}e+{len(digits) - 1:02d}"


def exact(value: float) -> str:
    """A value as given, every digit that matters: ``4.26``, ``5.0004`` (``shown``
    would say ``541.6`` for 541.6004), an int too large for a float as ``shown``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if abs(value) < 10**16 else shown(value)
    return repr(float(value))


def quoted(text: str, most: int = 40) -> str:
    """``repr(text)``, cut short if long (a refusal is one short line)."""
    if len(text) <= most:
        return repr(text)
    return f"{text[: most // 2]!r}... ({len(text)} characters)"


def given(value: object) -> str:
    """A value as given, in one short line: text ``quoted``, a number ``exact``
    (400 digits are ``1e+400``), anything else its repr."""
    if isinstance(value, str):
        return quoted(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and finite(value):
        return exact(value)
    return repr(value)


def wire_count(value: float, per: int) -> int | None:
    """``value`` in the wire's units (``per`` of them to one), if it is a whole number
    of them, up to float noise; else None. ``wire_count(2.1, DHZ_PER_HZ) == 21``."""
    if isinstance(value, int):
        return value * per
    scaled = value * per
    if not math.isfinite(scaled):
        return None
    count = round(scaled)
    return count if abs(scaled - count) <= WIRE_NOISE else None


def on_wire(value: float, per: int) -> float | None:
    """``value`` exactly on the wire's grid (2.1 for 2.0999999999999996), or None if
    it is not on it: the number to judge, send and record."""
    count = wire_count(value, per)
    return None if count is None else count / per


def off_wire(what: str, value: float, per: int, unit: str) -> str:
    """The words for a value that is not on the wire's grid."""
    return (
        f"{what} {exact(value)} {unit} is not a multiple of {1 / per:g} {unit}, "
        "the unit's resolution"
    )


def dwell_problem(dwell_s: float) -> str | None:
    """SAFETY.md 1, whatever built the plan and whatever the unit allows."""
    if not (finite(dwell_s) and DWELL_MIN_S <= dwell_s <= DWELL_MAX_S):
        return (
            f"dwell {exact(dwell_s)} s is outside 60-600 s (1 to 10 minutes); "
            "choose a dwell in that range"
        )
    return None


def pulse_problems(
    channel: int,
    *,
    frequency_hz: float,
    alt_frequency_hz: float | None,
    pulse_width_us: int,
    amplitude_ma: float,
    waveform: str,
) -> list[str]:
    """SAFETY.md 3 into a 500 ohm load at the channel's highest rate: pulses that
    overlap, r.m.s. current, pulse energy and peak voltage. A biphasic pulse is two
    phases: I_rms = I_peak * sqrt(2 * phase_width * f). The overlap rule is the
    unit's (PROTOCOL.md 5.1: two phases whatever the waveform)."""
    ch = f"channel {channel}"
    given_rate = max(frequency_hz, alt_frequency_hz or 0.0)
    # as floats (an int too large for one is infinitely many here): never an OverflowError
    rate, width, amplitude = (as_float(v) for v in (given_rate, pulse_width_us, amplitude_ma))
    phases = 1 if waveform == "monophasic" else 2
    duty = phases * width * 1e-6 * rate
    current_a = amplitude / 1000
    problems = []
    if 2 * width * 1e-6 * rate >= 1.0:
        problems.append(
            f"{ch}: {exact(pulse_width_us)} us pulses at {shown(given_rate)} Hz overlap (two "
            f"phases of {exact(pulse_width_us)} us need less than {1e6 / (2 * width):g} Hz)"
        )
    rms_ma = amplitude * math.sqrt(duty)
    if rms_ma > RMS_MAX_MA:
        problems.append(
            f"{ch}: {shown(amplitude_ma)} mA at {shown(given_rate)} Hz and "
            f"{exact(pulse_width_us)} us is {rms_ma:.1f} mA "
            f"r.m.s. into {LOAD_OHM:g} ohm, which exceeds {RMS_MAX_MA:g} mA (SAFETY.md 3); "
            "lower amplitude, pulse width or frequency"
        )
    energy_mj = current_a * current_a * LOAD_OHM * phases * width * 1e-6 * 1000
    if energy_mj > PULSE_ENERGY_MAX_MJ:
        problems.append(
            f"{ch}: pulse energy {energy_mj:.0f} mJ exceeds {PULSE_ENERGY_MAX_MJ:g} mJ (SAFETY.md 3)"
        )
    if current_a * LOAD_OHM > PEAK_VOLTAGE_MAX_V:
        problems.append(
            f"{ch}: peak voltage {current_a * LOAD_OHM:.0f} V into {LOAD_OHM:g} ohm exceeds "
            f"{PEAK_VOLTAGE_MAX_V:g} V (SAFETY.md 3)"
        )
    return problems


def plausible_max_ma(*, rate_hz: float, pulse_width_us: int, waveform: str) -> float:
    """The highest amplitude SAFETY.md 3 allows at this rate and pulse width."""
    phases = 1 if waveform == "monophasic" else 2
    duty = phases * pulse_width_us * 1e-6 * rate_hz
    bounds = [PEAK_VOLTAGE_MAX_V / LOAD_OHM * 1000]
    if duty > 0:
        bounds.append(RMS_MAX_MA / math.sqrt(duty))
        energy_per_a2 = LOAD_OHM * phases * pulse_width_us * 1e-6 * 1000
        bounds.append(math.sqrt(PULSE_ENERGY_MAX_MJ / energy_per_a2) * 1000)
    return min(bounds)


def on_step(value_ma: float, step_ma: float) -> bool:
    steps = value_ma / step_ma
    return abs(steps - round(steps)) < 1e-6
