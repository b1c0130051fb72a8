"""A whole number too large for a float (400 digits) is refused like any other number
out of range, never an internal error: Python's ints have no size limit, JSON's numbers
neither, and ``float()``, ``math.isfinite`` and ``f"{n:g}"`` raise OverflowError on
them. Each of these was a 500 on the HTTP API, an OverflowError from the library, or
exit 7 ("internal error") from the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ValidationError

from estim.bounds import checked, wait_timeout
from estim.cli import cli
from estim.config import ConfigError, load_config
from estim.durations import format_duration, parse_duration
from estim.errors import OptionError, OutputLimitError, PlanError
from estim.info import UnitInfo
from estim.limits import ClinicLimits, Limits
from estim.plan import ChannelPlan, SessionPlan
from estim.protocol import MessageType
from estim.safety import dwell_problem
from estim.session import heartbeat_period
from estim.sim import SimulatedUnit, UnitConfig

from .serve_parts import acting, clinic
from .test_cli_bad_inputs import assert_one_line, runner  # noqa: F401 (a fixture)

BIG = 10**400
DIGITS = str(BIG)
GOOD = {"channel": 1, "frequency_hz": 2, "pulse_width_us": 250, "amplitude_ma": 5}
BURST = {**GOOD, "frequency_hz": 100, "mode": "burst", "alt_frequency_hz": 2, "switch_s": 0.1}
PLAN_FIELDS = ["dwell", "ramp", "watchdog"]
CHANNEL_FIELDS = [
    "channel",
    "frequency_hz",
    "alt_frequency_hz",
    "switch_s",
    "pulse_width_us",
    "amplitude_ma",
]


def plan_with(field: str, value: Any) -> dict[str, Any]:
    channel = dict(BURST if field in ("alt_frequency_hz", "switch_s") else GOOD)
    data: dict[str, Any] = {"dwell": 120, "ramp": 5, "channels": [channel]}
    (channel if field in CHANNEL_FIELDS else data)[field] = value
    return data


def assert_short_line(error: BaseException) -> None:
    text = str(error)
    assert "\n" not in text
    assert len(text) < 300, text
    assert "Overflow" not in text


@pytest.mark.parametrize("sign", [1, -1], ids=["big", "-big"])
@pytest.mark.parametrize("field", PLAN_FIELDS + CHANNEL_FIELDS)
def test_the_model_refuses_a_huge_whole_number(field: str, sign: int) -> None:
    data = plan_with(field, sign * BIG)
    for attempt in (
        lambda: SessionPlan.model_validate(data),
        lambda: SessionPlan(**data),
        lambda: SessionPlan.model_validate_json(json.dumps(data)),
    ):
        with pytest.raises(PlanError) as caught:
            attempt()
        assert_short_line(caught.value)


@pytest.mark.parametrize("field", ["dwell", "ramp"])
def test_the_model_refuses_a_huge_duration_written_as_text(field: str) -> None:
    with pytest.raises(PlanError) as caught:
        SessionPlan.model_validate(plan_with(field, DIGITS))
    assert_short_line(caught.value)
    assert "characters" in str(caught.value) or "outside" in str(caught.value)


class StartRequest(BaseModel):
    plan: SessionPlan


@pytest.mark.parametrize("field", PLAN_FIELDS + CHANNEL_FIELDS)
def test_inside_another_model_it_is_a_validation_error(field: str) -> None:
    body = json.dumps({"plan": plan_with(field, "BIG")}).replace('"BIG"', DIGITS)
    with pytest.raises(ValidationError):
        StartRequest.model_validate_json(body)


UNIT = UnitInfo.from_message(UnitConfig().device_info())
CH1 = ChannelPlan(**GOOD)


@pytest.mark.parametrize("ma", [BIG, -BIG])
def test_the_limits_refuse_a_huge_amplitude(ma: int) -> None:
    problem = Limits(UNIT).amplitude_problem(CH1, ma)
    assert problem is not None
    assert problem.startswith("channel 1: amplitude ")
    with pytest.raises(OutputLimitError) as caught:
        Limits(UNIT).check_amplitude(CH1, ma)
    assert_short_line(caught.value)
    clinic_problem = ClinicLimits(amplitude_max_ma=5).amplitude_problem(1, BIG)
    assert clinic_problem is not None
    assert "above the clinic's maximum 5 mA" in clinic_problem


def test_the_limits_refuse_a_plan_built_without_validation_with_huge_numbers() -> None:
    channel = ChannelPlan.model_construct(
        **{**CH1.__dict__, "frequency_hz": BIG, "pulse_width_us": BIG, "amplitude_ma": BIG}
    )
    for changes in (
        {"dwell": BIG},
        {"ramp": BIG},
        {"watchdog": BIG},
        {"channels": (channel,)},
    ):
        fields: dict[str, Any] = {"dwell": 120.0, "ramp": 5.0, "watchdog": 0.5, "channels": (CH1,)}
        plan = SessionPlan.model_construct(**{**fields, **changes})
        problems = Limits(UNIT, ClinicLimits(frequency_max_hz=100)).plan_problems(plan)
        assert problems, changes
        for problem in problems:
            assert len(problem) < 300, problem


def test_the_other_numbers_of_the_api_refuse_a_huge_whole_number() -> None:
    with pytest.raises(OptionError):
        checked("timeout", BIG)
    with pytest.raises(OptionError):
        wait_timeout(BIG)
    with pytest.raises(ValueError, match="dwell"):
        parse_duration(BIG, "dwell")
    assert "outside 60-600 s" in (dwell_problem(BIG) or "")
    assert format_duration(BIG)
    plan = SessionPlan(dwell=120, channels=[GOOD])
    with pytest.raises(OutputLimitError, match="heartbeat"):
        heartbeat_period(plan, BIG)


# --- the HTTP API: 422, never a 500 -----------------------------------------------------------


def test_the_http_api_answers_422_for_huge_numbers(tmp_path: Path) -> None:
    with clinic(tmp_path, {"room-1": ""}) as c:
        c.connected()
        unit = c.units["room-1"]
        for field in PLAN_FIELDS + CHANNEL_FIELDS:
            text = json.dumps(plan_with(field, "BIG")).replace('"BIG"', DIGITS)
            answer = c.post(
                "/rooms/room-1/sessions",
                content=text,
                headers={"content-type": "application/json"},
            )
            assert answer.status_code == 422, (field, answer.text[:300])
            assert answer.headers["content-type"] == "application/problem+json"
            assert "\n" not in answer.json()["detail"]
        text = '{"channel": 1, "amplitude_ma": ' + DIGITS + "}"
        answer = c.post(
            "/rooms/room-1/amplitude", content=text, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 422, answer.text[:300]
        assert acting(unit) == {}


# --- the CLI: exit 2 with one line, never exit 7 -----------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--dwell", DIGITS, "-c", "1:2:250:5"],
        ["--dwell", "1m", "--ramp", DIGITS, "-c", "1:2:250:5"],
        ["--dwell", "1m", "-c", f"1:{DIGITS}:250:5"],
        ["--dwell", "1m", "-c", f"1:2:{DIGITS}:5"],
        ["--dwell", "1m", "-c", f"1:2:250:{DIGITS}"],
        ["--dwell", "1m", "-c", f"{DIGITS}:2:250:5"],
        ["--dwell", "1m", "-c", "1:2:250:5", "--watchdog", DIGITS],
    ],
    ids=["dwell", "ramp", "frequency", "pulse width", "amplitude", "channel", "watchdog"],
)
def test_the_cli_refuses_huge_numbers_in_one_line(
    runner: CliRunner,  # noqa: F811
    estim_url: str,
    estim_unit: SimulatedUnit,
    args: list[str],
) -> None:
    result = runner.invoke(cli, ["run", "--port", estim_url, "--yes", *args])
    assert result.exit_code == 2, result.stderr
    assert_one_line(result.stderr, "")
    assert len(result.stderr) < 300, result.stderr
    assert estim_unit.requests_seen[MessageType.CONFIGURE_CHANNEL] == 0


# --- the clinic's config file (TOML's integers have no size limit in tomllib either) ----------


@pytest.mark.parametrize(
    "text",
    [
        f"[limits]\namplitude_max_ma = {DIGITS}\n",
        f"[limits]\ndwell_max = {DIGITS}\n",
        f"[limits]\npulse_width_max_us = {DIGITS}\n",
        f"[presets.knee]\nfrequency_hz = {DIGITS}\npulse_width_us = 200\n",
        f"[presets.knee]\nfrequency_hz = 2\npulse_width_us = {DIGITS}\n",
        f"[presets.knee]\nfrequency_hz = 2\npulse_width_us = 200\namplitude_ma = {DIGITS}\n",
    ],
)
def test_the_config_file_refuses_huge_numbers(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_short_line(caught.value)
