"""The limits authority, pure: SAFETY.md ∩ the unit's DEVICE_INFO ∩ the clinic's
config, for a plan and for every live change (issue 10, item 1 and 2)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from estim.errors import DwellLimitError, OutputLimitError
from estim.info import UnitInfo
from estim.limits import ClinicLimits, Limits
from estim.plan import ChannelPlan, SessionPlan
from estim.safety import pulse_problems
from estim.sim import UnitConfig

UNIT = UnitInfo.from_message(UnitConfig().device_info())
#: a unit that reports a 200 mA maximum and 3600 s of dwell (PROTOCOL.md 5.1 allows it)
BIG_UNIT = replace(
    UNIT, amplitude_max_ma=200.0, amplitude_step_ma=0.5, dwell_max_s=3600.0, slew_max_ma_per_s=100
)
CH1 = ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)


def plan(**changes: Any) -> SessionPlan:
    fields: dict[str, Any] = {"dwell": 600, "ramp": 5, "channels": [CH1]}
    fields.update(changes)
    return SessionPlan(**fields)


# --- live changes -----------------------------------------------------------------------


def test_a_live_change_above_the_clinic_maximum_is_refused() -> None:
    limits = Limits(UNIT, ClinicLimits(amplitude_max_ma=6))
    limits.check_amplitude(CH1, 6.0)
    with pytest.raises(OutputLimitError, match="above the clinic's maximum 6 mA"):
        limits.check_amplitude(CH1, 6.1)
    assert limits.amplitude_max_ma(CH1) == 6.0


def test_a_live_change_over_50_ma_rms_is_refused_even_when_the_unit_allows_it() -> None:
    # issue 10: 200 mA at 100 Hz and 500 us is 63 mA r.m.s. into 500 ohm
    fast = ChannelPlan(channel=1, frequency_hz=100, pulse_width_us=500, amplitude_ma=20)
    limits = Limits(BIG_UNIT)
    with pytest.raises(OutputLimitError, match=r"r\.m\.s\. into 500 ohm, which exceeds 50 mA"):
        limits.check_amplitude(fast, 200.0)
    # the boundary: I_rms = I * sqrt(2 * 500e-6 * 100) = I * 0.316..., so 158.1 mA is 50 mA
    top = limits.amplitude_max_ma(fast)
    assert top == 158.0
    limits.check_amplitude(fast, top)
    with pytest.raises(OutputLimitError):
        limits.check_amplitude(fast, top + BIG_UNIT.amplitude_step_ma)


@pytest.mark.parametrize(
    ("ma", "message"),
    [
        (float("nan"), "not a number"),
        (float("inf"), "not a number"),
        (-0.1, "0 or more"),
        (50.1, "above the unit's maximum 50 mA"),
        (12.05, "not a multiple of the unit's step 0.1 mA"),
        (True, "not a number"),
    ],
)
def test_a_live_change_outside_the_unit_is_refused(ma: float, message: str) -> None:
    with pytest.raises(OutputLimitError, match=message):
        Limits(UNIT).check_amplitude(CH1, ma)


def test_a_live_change_may_go_to_zero_a_plan_may_not() -> None:
    Limits(UNIT).check_amplitude(CH1, 0.0)
    assert Limits(UNIT).amplitude_problem(CH1, 0.0, live=False)


def test_pulse_energy_and_peak_voltage() -> None:
    # 500 V into 500 ohm is 1 A: any amplitude above it is refused, whatever the duty
    assert any(
        "peak voltage" in p
        for p in pulse_problems(
            1,
            frequency_hz=1,
            alt_frequency_hz=None,
            pulse_width_us=50,
            amplitude_ma=1001,
            waveform="biphasic_symmetric",
        )
    )
    # 300 mJ into 500 ohm: I^2 * 500 * 2 * pw; at 65 ms per phase and 500 mA: 16 J
    assert any(
        "pulse energy" in p
        for p in pulse_problems(
            1,
            frequency_hz=0.1,
            alt_frequency_hz=None,
            pulse_width_us=65_000,
            amplitude_ma=500,
            waveform="biphasic_symmetric",
        )
    )


def test_overlap_uses_two_phases_whatever_the_waveform_as_the_unit_does() -> None:
    # PROTOCOL.md 5.1: 2 x pw x f < 1; a monophasic plan at 500 us, 1001 Hz overlaps too
    problems = pulse_problems(
        1,
        frequency_hz=1001,
        alt_frequency_hz=None,
        pulse_width_us=500,
        amplitude_ma=0.1,
        waveform="monophasic",
    )
    assert any("overlap" in p for p in problems)


# --- whole plans ---------------------------------------------------------------------------


@pytest.mark.parametrize("dwell", [59.0, 601.0, 3600.0, 0.0, -1.0, math.nan, math.inf])
def test_the_dwell_is_60_to_600_s_whatever_the_unit_reports(dwell: float) -> None:
    forged = SessionPlan.model_construct(dwell=dwell, ramp=5.0, channels=[CH1], watchdog=0.5)
    with pytest.raises(DwellLimitError, match="outside 60-600 s"):
        Limits(BIG_UNIT).check_plan(forged)


def test_a_narrower_unit_narrows_the_dwell() -> None:
    narrow = replace(UNIT, dwell_max_s=300.0)
    with pytest.raises(DwellLimitError, match="outside the unit's range, 1 min to 5 min"):
        Limits(narrow).check_plan(plan(dwell=600))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ramp": 400.0}, "half the dwell"),
        ({"ramp": -1.0}, "half the dwell"),
        ({"watchdog": 5.0}, "outside 0.2-2 s"),
        ({"watchdog": 0.1}, "outside 0.2-2 s"),
        ({"channels": [CH1, CH1]}, "different channels"),
        ({"channels": []}, "different channels"),
        (
            {"channels": [CH1.model_construct(**{**CH1.__dict__, "amplitude_ma": 200.0})]},
            "above the unit's maximum",
        ),
    ],
)
def test_a_plan_built_without_validation_is_checked_again(
    changes: dict[str, Any], message: str
) -> None:
    fields: dict[str, Any] = {"dwell": 600.0, "ramp": 5.0, "channels": [CH1], "watchdog": 0.5}
    fields.update(changes)
    with pytest.raises(OutputLimitError, match=message):
        Limits(UNIT).check_plan(SessionPlan.model_construct(**fields))


def test_clinic_limits_apply_to_plans() -> None:
    clinic = ClinicLimits(amplitude_max_ma=4, dwell_max=300, ramp_min=10, frequency_max_hz=50)
    problems = Limits(UNIT, clinic).plan_problems(plan(dwell=600, ramp=5))
    assert any("above the clinic's maximum 5 min" in p for p in problems)
    assert any("below the clinic's minimum 10 s" in p for p in problems)
    assert any("above the clinic's maximum 4 mA" in p for p in problems)


def test_a_ramp_faster_than_the_unit_slews() -> None:
    with pytest.raises(OutputLimitError, match=r"use a ramp of at least 1\.2 s"):
        Limits(UNIT).check_plan(
            plan(ramp=1, channels=[CH1.model_copy(update={"amplitude_ma": 12})])
        )


def test_clinic_limits_wider_than_the_unit_are_named() -> None:
    clinic = ClinicLimits(amplitude_max_ma=80, frequency_max_hz=100)
    assert Limits(UNIT, clinic).clinic_wider_than_unit() == [
        "the clinic's amplitude_max_ma 80 mA is above this unit's 50 mA; the unit's applies"
    ]
