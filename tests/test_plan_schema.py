"""One plan, one schema: ``SessionPlan`` and ``schemas/session-plan.schema.json`` (judged by
the independent ``jsonschema`` package) agree on every plan of the corpus and on plans
hypothesis makes up; where they may differ (rules between fields that no JSON Schema
can state) the schema accepts, estim refuses, and the corpus lists each such plan.

A refusal is estim's own typed error in one line, still a ValueError; inside another
pydantic model (a request body) it is that model's ValidationError with the same words."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from jsonschema import Draft202012Validator
from pydantic import BaseModel, TypeAdapter, ValidationError

from estim.durations import duration_pattern, int_range_pattern, plan_duration_seconds
from estim.errors import DwellLimitError, OutputLimitError, PlanError
from estim.plan import ChannelPlan, SessionPlan, plan_error

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schemas" / "session-plan.schema.json").read_text())
CORPUS = json.loads((ROOT / "schemas" / "session-plan.corpus.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
#: the words of estim's refusal for each rule the schema cannot judge
RULES = {
    "ramp": "more than half the dwell",
    "overlap": "overlap",
    "rms": "r.m.s.",
    "energy": "pulse energy",
    "grid": "the unit's resolution",
}


def model_refusal(plan: Any) -> PlanError | None:
    """estim's refusal of ``plan`` (a JSON value), or None if it takes it."""
    try:
        SessionPlan.model_validate(plan)
    except PlanError as err:
        return err
    return None


def schema_accepts(plan: Any) -> bool:
    return VALIDATOR.is_valid(plan)


def test_the_published_schema_is_a_valid_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("case", CORPUS["valid"], ids=lambda c: c["why"][:60])
def test_valid_plans_pass_both(case: dict[str, Any]) -> None:
    assert model_refusal(case["plan"]) is None
    assert schema_accepts(case["plan"]), list(VALIDATOR.iter_errors(case["plan"]))


@pytest.mark.parametrize("case", CORPUS["invalid"], ids=lambda c: c["why"][:60])
def test_invalid_plans_fail_both(case: dict[str, Any]) -> None:
    refusal = model_refusal(case["plan"])
    assert refusal is not None, "estim took it"
    assert isinstance(refusal, ValueError)
    assert "\n" not in str(refusal), str(refusal)
    assert len(str(refusal)) < 300, str(refusal)
    assert not schema_accepts(case["plan"]), "the schema took it"


@pytest.mark.parametrize("case", CORPUS["schema_cannot_judge"], ids=lambda c: c["why"][:60])
def test_what_the_schema_cannot_judge_estim_refuses(case: dict[str, Any]) -> None:
    assert schema_accepts(case["plan"]), "the schema judges this one after all: move it to invalid"
    refusal = model_refusal(case["plan"])
    assert refusal is not None
    assert RULES[case["rule"]] in str(refusal)


def test_corpus_counts() -> None:
    counts = {k: len(CORPUS[k]) for k in ("valid", "invalid", "schema_cannot_judge")}
    assert counts["valid"] >= 50
    assert counts["invalid"] >= 100
    assert {c["rule"] for c in CORPUS["schema_cannot_judge"]} == set(RULES)
    print(f"\nplan corpus: {counts}")


# --- plans made up by hypothesis: any disagreement is one of the rules the schema cannot state


def _values(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(good), st.sampled_from(bad))


NUMBERS = st.one_of(
    st.integers(-10, 2_000_000),
    st.floats(-10, 2e6, allow_nan=False, allow_infinity=False),
)
CHANNEL = st.fixed_dictionaries(
    {
        "channel": _values([1, 2, 3, 8], [0, 9, 1.5, "1", True]),
        "frequency_hz": st.one_of(st.sampled_from([2, 100, 0.5, 499999.0, 500000]), NUMBERS),
        "pulse_width_us": st.one_of(st.sampled_from([1, 250, 65535, 65536, 250.0]), NUMBERS),
        "amplitude_ma": st.one_of(st.sampled_from([0.001, 12, 100, 1000, 1000.5, 0]), NUMBERS),
    },
    optional={
        "waveform": st.sampled_from(["biphasic_symmetric", "monophasic", "square"]),
        "mode": st.sampled_from(["continuous", "burst", "dense_disperse", "x"]),
        "alt_frequency_hz": st.one_of(st.none(), st.sampled_from([2, 100, 0, 1e6]), NUMBERS),
        "switch_s": st.one_of(st.none(), st.sampled_from([3, 0.5, 0, -1])),
    },
)
DURATION_TEXT = st.text(alphabet="0123456789.:msecinMS ", max_size=9)
PLANS = st.fixed_dictionaries(
    {
        "dwell": st.one_of(
            st.sampled_from([60, 600, 59.5, 600.5, "8m", "10:00", "10:01", "1m30s"]),
            NUMBERS,
            DURATION_TEXT,
        ),
        "channels": st.lists(CHANNEL, min_size=0, max_size=9),
    },
    optional={
        "ramp": st.one_of(st.sampled_from([0, 5, 30, 300, 301, -1, "5s", "5:00"]), DURATION_TEXT),
        "watchdog": st.sampled_from([0.2, 0.5, 2, 0.1, 2.5, "0.5"]),
        "patient_ref": st.one_of(st.none(), st.text(max_size=3), st.just("x" * 201)),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PLANS)
def test_made_up_plans_get_the_same_verdict_or_a_rule_the_schema_cannot_state(
    plan: dict[str, Any],
) -> None:
    refusal = model_refusal(plan)
    accepted = schema_accepts(plan)
    if refusal is None:
        assert accepted, f"estim takes it, the schema refuses: {list(VALIDATOR.iter_errors(plan))}"
    elif accepted:
        assert any(words in str(refusal) for words in RULES.values()), str(refusal)


@settings(max_examples=600, deadline=None)
@given(DURATION_TEXT)
def test_a_text_dwell_is_judged_alike(text: str) -> None:
    plan = {
        "dwell": text,
        "ramp": 0,
        "channels": [{"channel": 1, "frequency_hz": 2, "pulse_width_us": 250, "amplitude_ma": 5}],
    }
    assert (model_refusal(plan) is None) == schema_accepts(plan), text


@pytest.mark.parametrize("low", range(0, 12))
def test_the_range_patterns_are_exact(low: int) -> None:
    for high in range(low, 12):
        pattern = re.compile(duration_pattern(low, high))
        for seconds in range(0, 12 * 60 + 2):
            for text in (f"{seconds}", f"{seconds}s", f"{seconds // 60}:{seconds % 60:02d}"):
                exact = plan_duration_seconds(text)
                inside = exact is not None and low * 60 <= exact <= high * 60
                assert bool(pattern.search(text)) == inside, (low, high, text)
    numbers = re.compile(int_range_pattern(low * 7, low * 50 + 3))
    assert [n for n in range(2000) if numbers.fullmatch(str(n))] == list(
        range(low * 7, low * 50 + 4)
    )


# --- estim's errors, one line, and inside another model --------------------------------------

GOOD_CHANNEL = {"channel": 1, "frequency_hz": 2, "pulse_width_us": 250, "amplitude_ma": 12}


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [
        ({"dwell": "11m"}, DwellLimitError, "dwell '11m' is outside 60-600 s"),
        ({"dwell": 59}, DwellLimitError, "dwell 59 s is outside 60-600 s"),
        ({"dwell": math.nan}, DwellLimitError, "dwell nan is not a finite duration"),
        ({"dwell": math.inf}, DwellLimitError, "not a finite duration"),
        ({"dwell": "0:08:00"}, DwellLimitError, "not written as a plan takes it"),
        ({"dwell": "1m", "ramp": 31}, PlanError, "more than half the dwell"),
        ({"dwell": "1m", "watchdog": 3}, PlanError, "watchdog 3 s is above 2 s"),
        (
            {"dwell": "1m", "channels": [{**GOOD_CHANNEL, "amplitude_ma": -12}]},
            OutputLimitError,
            "amplitude_ma -12 must be a positive number",
        ),
        (
            {"dwell": "1m", "channels": [{**GOOD_CHANNEL, "amplitude_ma": math.nan}]},
            OutputLimitError,
            "amplitude_ma nan is not a finite number",
        ),
        (
            {
                "dwell": "1m",
                "channels": [{**GOOD_CHANNEL, "frequency_hz": 1500, "pulse_width_us": 400}],
            },
            OutputLimitError,
            "overlap",
        ),
        (
            {"dwell": "1m", "channels": [GOOD_CHANNEL, GOOD_CHANNEL]},
            PlanError,
            "appears more than once",
        ),
        ({"dwell": "1m", "channels": [], "dwel": 1}, PlanError, "0 channels"),
        ({"dwell": "1m", "channels": [GOOD_CHANNEL], "dwel": 1}, PlanError, "unknown field 'dwel'"),
        ({"channels": [GOOD_CHANNEL]}, PlanError, "SessionPlan: dwell is missing"),
    ],
)
def test_refusals_are_estim_s_own_typed_one_line_errors(
    fields: dict[str, Any], error: type[PlanError], words: str
) -> None:
    data = {"channels": [GOOD_CHANNEL], **fields}
    for attempt in (
        lambda: SessionPlan(**data),
        lambda: SessionPlan.model_validate(data),
    ):
        with pytest.raises(error) as caught:
            attempt()
        assert type(caught.value) is error  # not a subclass standing in for another
        assert isinstance(caught.value, ValueError)
        assert words in str(caught.value)
        assert "\n" not in str(caught.value)
        assert "pydantic" not in str(caught.value)
    if not any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(data)):
        with pytest.raises(error, match=re.escape(words)):
            SessionPlan.model_validate_json(json.dumps(data))


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def test_a_channel_alone_refuses_with_estim_s_error_too() -> None:
    with pytest.raises(OutputLimitError, match=r"r\.m\.s\."):
        ChannelPlan(channel=1, frequency_hz=150, pulse_width_us=500, amplitude_ma=250)
    with pytest.raises(PlanError, match="channel 9 is above 8"):
        ChannelPlan.model_validate({**GOOD_CHANNEL, "channel": 9})


class StartRequest(BaseModel):
    """What an HTTP API's request body might be: a plan inside another model."""

    unit: str
    plan: SessionPlan


@pytest.mark.parametrize(
    ("plan", "words"),
    [
        ({"dwell": "11m", "channels": [GOOD_CHANNEL]}, "dwell '11m' is outside 60-600 s"),
        (
            {"dwell": "1m", "channels": [{**GOOD_CHANNEL, "amplitude_ma": 5000}]},
            "amplitude_ma 5000 mA is above 1000 mA",
        ),
        ({"dwell": "1m", "channels": [GOOD_CHANNEL], "x": 1}, "unknown field 'x'"),
    ],
)
def test_inside_another_model_a_refusal_is_a_validation_error_an_api_answers_422(
    plan: dict[str, Any], words: str
) -> None:
    """FastAPI answers a request body's ValidationError with 422; any other exception
    would be a 500. The plan's words survive, and ``plan_error`` gives the one line."""
    for attempt in (
        lambda: StartRequest.model_validate({"unit": "sim://", "plan": plan}),
        lambda: StartRequest.model_validate_json(json.dumps({"unit": "sim://", "plan": plan})),
        lambda: TypeAdapter(SessionPlan).validate_python(plan),
    ):
        with pytest.raises(ValidationError) as caught:
            attempt()
        assert words in str(caught.value)
        line = plan_error(caught.value)
        assert isinstance(line, PlanError)
        assert words in str(line)
        assert "\n" not in str(line)


def test_a_valid_plan_round_trips_through_its_json() -> None:
    plan = SessionPlan(dwell="1m30s", ramp="5s", channels=[GOOD_CHANNEL])
    assert (plan.dwell, plan.ramp, plan.channels[0].pulse_width_us) == (90.0, 5.0, 250)
    again = SessionPlan.model_validate_json(plan.model_dump_json())
    assert again == plan
    assert isinstance(again.channels, tuple)
    assert schema_accepts(json.loads(plan.model_dump_json()))
