"""SAFETY.md's numbers, and the plausibility rule they make: pure arithmetic that
the plan model, the limits authority and the clinic config all use (a leaf module:
it imports nothing of estim's)."""

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


def dwell_problem(dwell_s: float) -> str | None:
    """SAFETY.md 1, whatever built the plan and whatever the unit allows."""
    if not (math.isfinite(dwell_s) and DWELL_MIN_S <= dwell_s <= DWELL_MAX_S):
        return f"dwell {dwell_s!r} s is outside 60-600 s (1 to 10 minutes); choose a dwell in that range"
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
    rate = max(frequency_hz, alt_frequency_hz or 0.0)
    phases = 1 if waveform == "monophasic" else 2
    duty = phases * pulse_width_us * 1e-6 * rate
    current_a = amplitude_ma / 1000
    problems = []
    if 2 * pulse_width_us * 1e-6 * rate >= 1.0:
        problems.append(
            f"{ch}: {pulse_width_us} us pulses at {rate:g} Hz overlap (two phases of "
            f"{pulse_width_us} us need less than {1e6 / (2 * pulse_width_us):g} Hz)"
        )
    rms_ma = amplitude_ma * math.sqrt(duty)
    if rms_ma > RMS_MAX_MA:
        problems.append(
            f"{ch}: {amplitude_ma:g} mA at {rate:g} Hz and {pulse_width_us} us is {rms_ma:.1f} mA "
            f"r.m.s. into {LOAD_OHM:g} ohm, which exceeds {RMS_MAX_MA:g} mA (SAFETY.md 3); "
            "lower amplitude, pulse width or frequency"
        )
    energy_mj = current_a * current_a * LOAD_OHM * phases * pulse_width_us * 1e-6 * 1000
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
