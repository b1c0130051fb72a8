"""What is judged, what is sent and what is recorded are the same number.

The wire carries whole numbers (PROTOCOL.md 2): rates in tenths of a hertz, amplitudes
in microamps, pulse widths in microseconds, times in milliseconds. A plan number off
that grid used to be judged as typed and rounded on the way out: 4.26 Hz, 1000 us and
541.6 mA passed the 50 mA r.m.s. envelope (50.0 mA) and the unit ran 4.3 Hz (50.2 mA),
while the record kept 4.26 Hz. Now a number off the grid is refused, one line naming
the channel, the field, the value and the grid, by the model (so the library, the CLI,
the HTTP API and a clinic's presets all refuse it) and again by the limits authority
(a plan built without validation) and for every live change. Float noise is not a
typo: it is taken, and the exact grid value is what is judged, sent and recorded."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from estim.config import ConfigError, load_config
from estim.durations import duration_pattern, plan_duration_seconds
from estim.errors import DwellLimitError, OutputLimitError, PlanError
from estim.info import UnitInfo
from estim.journal import Journal
from estim.limits import Limits
from estim.plan import ChannelPlan, SessionPlan
from estim.protocol import MessageType
from estim.sim import UnitConfig

from .core_rig import Rig
from .serve_parts import acting, clinic, plan as http_plan

GOOD = {"channel": 1, "frequency_hz": 2, "pulse_width_us": 250, "amplitude_ma": 5}
BURST = {**GOOD, "frequency_hz": 100, "mode": "burst", "alt_frequency_hz": 2, "switch_s": 0.1}
#: a unit that goes to 600 mA in 0.1 mA steps and slews fast (the reviewer's unit)
STRONG = UnitConfig(
    amplitude_max_ua=600_000,
    amplitude_step_ua=100,
    pulse_width_max_us=1000,
    slew_max_ua_per_s=200_000,
)


def session_plan(channel: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {"dwell": 60, "ramp": 5, "channels": [channel or GOOD], **fields}


# --- the model refuses a number off the wire's grid ----------------------------------------

OFF_GRID = [
    (
        session_plan({**GOOD, "frequency_hz": 4.26}),
        OutputLimitError,
        "channel 1: frequency_hz 4.26 Hz is not a multiple of 0.1 Hz, the unit's resolution",
    ),
    (
        session_plan({**GOOD, "frequency_hz": 0.01}),
        OutputLimitError,
        "channel 1: frequency_hz 0.01 Hz is not a multiple of 0.1 Hz",
    ),
    (
        session_plan({**BURST, "channel": 2, "alt_frequency_hz": 2.55}),
        OutputLimitError,
        "channel 2: alt_frequency_hz 2.55 Hz is not a multiple of 0.1 Hz, the unit's resolution",
    ),
    (
        session_plan({**GOOD, "amplitude_ma": 5.0004}),
        OutputLimitError,
        "channel 1: amplitude_ma 5.0004 mA is not a multiple of 0.001 mA, the unit's resolution",
    ),
    (
        session_plan({**BURST, "switch_s": 0.1005}),
        PlanError,
        "channel 1: switch_s 0.1005 s is not a multiple of 0.001 s, the unit's resolution",
    ),
    (
        session_plan(dwell=90.0004),
        DwellLimitError,
        "dwell 90.0004 s is not a multiple of 0.001 s, the unit's resolution",
    ),
    (
        session_plan(dwell="1:30.0004"),
        DwellLimitError,
        "dwell '1:30.0004' is not a multiple of 0.001 s, the unit's resolution",
    ),
    (
        session_plan(dwell="1.00001m"),
        DwellLimitError,
        "dwell '1.00001m' is not a multiple of 0.001 s",
    ),
    (
        session_plan(ramp=2.0005),
        PlanError,
        "ramp 2.0005 s is not a multiple of 0.001 s, the unit's resolution",
    ),
    (
        session_plan(ramp="2.0005s"),
        PlanError,
        "ramp '2.0005s' is not a multiple of 0.001 s",
    ),
    (
        session_plan(watchdog=0.5005),
        PlanError,
        "watchdog 0.5005 s is not a multiple of 0.001 s, the unit's resolution",
    ),
]


@pytest.mark.parametrize(("data", "error", "words"), OFF_GRID, ids=lambda x: str(x)[:50])
def test_a_number_off_the_wire_s_grid_is_refused_in_one_line(
    data: dict[str, Any], error: type[PlanError], words: str
) -> None:
    for attempt in (
        lambda: SessionPlan(**data),
        lambda: SessionPlan.model_validate(data),
        lambda: SessionPlan.model_validate_json(json.dumps(data)),
    ):
        with pytest.raises(error) as caught:
            attempt()
        assert type(caught.value) is error
        assert words in str(caught.value)
        assert "\n" not in str(caught.value)


def test_the_reviewer_s_plan_is_refused_and_its_grid_neighbour_is_judged_as_sent() -> None:
    """4.26 Hz is refused; 4.3 Hz, what the unit would have run, is over the envelope."""
    with pytest.raises(OutputLimitError, match=r"frequency_hz 4\.26 Hz is not a multiple of"):
        ChannelPlan(channel=1, frequency_hz=4.26, pulse_width_us=1000, amplitude_ma=541.6)
    with pytest.raises(OutputLimitError, match=r"50\.2 mA r\.m\.s\."):
        ChannelPlan(channel=1, frequency_hz=4.3, pulse_width_us=1000, amplitude_ma=541.6)


@pytest.mark.parametrize(
    ("field", "noisy", "exact"),
    [
        ("frequency_hz", 0.7 * 3, 2.1),  # 2.0999999999999996
        ("frequency_hz", 2.1000000000000001, 2.1),
        ("frequency_hz", 0.1 + 0.2, 0.3),  # 0.30000000000000004
        ("amplitude_ma", 4.1 * 3, 12.3),  # 12.299999999999999
        ("amplitude_ma", 0.1 + 0.2, 0.3),
    ],
)
def test_float_noise_is_taken_and_the_exact_grid_value_kept(
    field: str, noisy: float, exact: float
) -> None:
    channel = ChannelPlan(**{**GOOD, field: noisy})
    assert getattr(channel, field) == exact
    assert repr(getattr(channel, field)) == repr(exact)


def test_float_noise_in_times_is_taken_and_the_exact_grid_value_kept() -> None:
    noisy = SessionPlan(
        dwell=60.1 * 3,  # 180.29999999999998
        ramp=0.1 + 0.2,
        watchdog=0.1 * 3,
        channels=[{**BURST, "switch_s": 0.1 * 3}],
    )
    assert (noisy.dwell, noisy.ramp, noisy.watchdog) == (180.3, 0.3, 0.3)
    assert noisy.channels[0].switch_s == 0.3


FRACTIONS = ["", ".0", ".5", ".05", ".005", ".0005", ".1250", ".12500", ".00005", ".000050"]
FRACTIONS += [".00001", ".000025", ".0000500", ".9995", ".99995", ".999950", ".0010000001"]


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_the_schema_s_duration_pattern_is_exact_about_milliseconds(fraction: str) -> None:
    """The published pattern takes a text duration exactly when the model does: in
    range and a whole number of milliseconds, in every form of the grammar."""
    pattern = re.compile(duration_pattern(1, 10))
    for whole in (0, 1, 5, 9, 10, 59, 60, 61, 90, 599, 600):
        texts = [f"{whole}{fraction}", f"{whole}{fraction}s", f"{whole}{fraction} min"]
        texts += [f"{whole // 60}:{whole % 60:02d}{fraction}", f"1m{whole % 60}{fraction}s"]
        for text in texts:
            seconds = plan_duration_seconds(text)
            assert seconds is not None, text
            takes = 60 <= seconds <= 600 and (seconds * 1000).denominator == 1
            assert bool(pattern.search(text)) == takes, text
            try:
                SessionPlan(dwell=text, ramp=0, channels=[GOOD])
            except PlanError:
                assert not takes, text
            else:
                assert takes, text


def test_switch_s_must_fit_the_wire() -> None:
    """switch_ms is a u16 and PROTOCOL.md 5.1 takes 60000 at most: 100 s used to end
    in a LocalProtocolError when the request was encoded; the limits refuse it."""
    unit = UnitInfo.from_message(UnitConfig().device_info())
    too_long = SessionPlan(dwell=60, ramp=5, channels=[{**BURST, "switch_s": 100}])
    with pytest.raises(OutputLimitError, match=r"channel 1: switch 100 s is outside 0\.001-60 s"):
        Limits(unit).check_plan(too_long)
    longest = SessionPlan(dwell=60, ramp=5, channels=[{**BURST, "switch_s": 60}])
    assert not [p for p in Limits(unit).plan_problems(longest) if "switch" in p]


# --- the limits authority judges a plan built without validation the same way --------------


def _forged(**channel: Any) -> SessionPlan:
    fields = {**GOOD, "waveform": "biphasic_symmetric", "mode": "continuous"}
    fields |= {"alt_frequency_hz": None, "switch_s": None, **channel}
    return SessionPlan.model_construct(
        dwell=60.0, ramp=5.0, watchdog=0.5, channels=(ChannelPlan.model_construct(**fields),)
    )


@pytest.mark.parametrize(
    ("plan", "words"),
    [
        (_forged(frequency_hz=4.26), "channel 1: frequency 4.26 Hz is not a multiple of 0.1 Hz"),
        (
            _forged(frequency_hz=100.0, mode="burst", alt_frequency_hz=2.55, switch_s=0.1),
            "channel 1: alt frequency 2.55 Hz is not a multiple of 0.1 Hz",
        ),
        (_forged(amplitude_ma=5.0004), "channel 1: amplitude 5.0004 mA is not a multiple of 0.001"),
        (_forged(pulse_width_us=250.5), "channel 1: pulse width 250.5 us is not a whole number"),
        (
            _forged(frequency_hz=100.0, mode="burst", alt_frequency_hz=2.0, switch_s=0.1005),
            "channel 1: switch 0.1005 s is not a multiple of 0.001 s",
        ),
        (
            _forged(frequency_hz=100.0, mode="burst", alt_frequency_hz=2.0, switch_s=100.0),
            "channel 1: switch 100 s is outside 0.001-60 s",
        ),
        (
            _forged().model_copy(update={"dwell": 90.0004}),
            "dwell 90.0004 s is not a multiple of 0.001 s",
        ),
        (
            _forged().model_copy(update={"ramp": 2.0005}),
            "ramp 2.0005 s is not a multiple of 0.001 s",
        ),
        (
            _forged().model_copy(update={"watchdog": 0.5005}),
            "watchdog 0.5005 s is not a multiple of 0.001 s",
        ),
    ],
)
def test_the_limits_refuse_a_plan_built_without_validation_off_the_grid(
    plan: SessionPlan, words: str
) -> None:
    unit = UnitInfo.from_message(UnitConfig().device_info())
    problems = Limits(unit).plan_problems(plan)
    assert any(words in p for p in problems), problems


def test_what_the_unit_runs_is_what_was_judged_and_recorded() -> None:
    """End to end on the pure rig: the plan's numbers (typed with float noise) are the
    unit's CONFIGURE_CHANNEL numbers and the record's."""
    rig = Rig(STRONG)
    the_plan = SessionPlan(
        dwell=60.1 * 3,
        ramp=5,
        channels=[
            {
                "channel": 1,
                "frequency_hz": 0.7 * 3,
                "pulse_width_us": 1000,
                "amplitude_ma": 4.1 * 3,
                "mode": "dense_disperse",
                "alt_frequency_hz": 1.1 * 2,  # 2.2000000000000002
                "switch_s": 0.1 * 3,  # 0.30000000000000004
            }
        ],
    )
    policy = rig.start(the_plan)
    rig.run(10)
    sent = rig.unit._configs[1]
    channel = policy.plan.channels[0]
    assert (sent.frequency_dhz, sent.alt_frequency_dhz) == (21, 22)
    assert (sent.amplitude_ua, sent.switch_ms) == (12_300, 300)
    assert channel.frequency_hz * 10 == sent.frequency_dhz
    assert channel.alt_frequency_hz is not None
    assert channel.alt_frequency_hz * 10 == sent.alt_frequency_dhz
    assert channel.amplitude_ma * 1000 == sent.amplitude_ua
    on = rig.unit.events("output_on")[-1].data
    assert on["dwell_ms"] == 180_300 == policy.plan.dwell * 1000
    assert rig.records[0].data["plan"]["channels"][0]["frequency_hz"] == 2.1


# --- live changes: the microamps sent are the microamps judged and recorded ------------------


def test_a_live_change_off_the_microamp_grid_is_refused_before_sending() -> None:
    fine = UnitConfig(amplitude_step_ua=1)
    rig = Rig(fine)
    policy = rig.start(SessionPlan(dwell=60, ramp=5, channels=[GOOD]))
    rig.run(10)
    token = rig.set_amplitude(policy, 1, 5.0004)
    error = rig.error(token)
    assert isinstance(error, OutputLimitError)
    assert "channel 1: amplitude 5.0004 mA is not a multiple of 0.001 mA" in str(error)
    assert rig.unit.requests_seen[MessageType.SET_AMPLITUDE] == 0
    assert rig.records[-1].kind == "amplitude_refused"


def test_a_live_change_with_float_noise_records_the_microamps_sent() -> None:
    rig = Rig()
    policy = rig.start(SessionPlan(dwell=60, ramp=5, channels=[GOOD]))
    rig.run(10)
    token = rig.set_amplitude(policy, 1, 4.1 * 3)  # 12.299999999999999
    assert rig.results[token] is None
    assert rig.unit.events("setpoint")[-1].data["ua"] == 12_300
    record = next(r for r in reversed(rig.records) if r.kind == "amplitude_set")
    assert repr(record.data["ma"]) == "12.3"


def test_the_limits_judge_the_microamps_sent() -> None:
    """An amplitude within float noise of a microamp is judged as that microamp."""
    unit = UnitInfo.from_message(STRONG.device_info())
    wide = ChannelPlan(channel=1, frequency_hz=4.3, pulse_width_us=1000, amplitude_ma=100)
    limits = Limits(unit)
    top = limits.amplitude_max_ma(wide)
    assert limits.amplitude_problem(wide, top) is None
    assert limits.amplitude_problem(wide, top + 1e-12) is None
    assert limits.amplitude_problem(wide, top + 0.1) is not None


# --- every path: the HTTP API, a clinic's presets, and records already in a journal ----------


def test_the_http_api_answers_422_for_a_number_off_the_grid(tmp_path: Path) -> None:
    with clinic(tmp_path, {"room-1": ""}) as c:
        c.connected()
        unit = c.units["room-1"]
        for body, words in (
            (http_plan(ch_frequency_hz=2.05), "frequency_hz 2.05 Hz is not a multiple of 0.1 Hz"),
            (http_plan(ch_amplitude_ma=5.0004), "amplitude_ma 5.0004 mA is not a multiple of"),
            (http_plan(dwell=120.0004), "dwell 120.0004 s is not a multiple of 0.001 s"),
        ):
            answer = c.post("/rooms/room-1/sessions", body)
            assert answer.status_code == 422, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            assert words in answer.json()["detail"]
            assert acting(unit) == {}


def test_a_clinic_preset_off_the_grid_is_refused_when_the_config_is_read(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[presets.knee]\nfrequency_hz = 2.55\npulse_width_us = 200\n")
    with pytest.raises(ConfigError, match=r"frequency_hz 2\.55 Hz is not a multiple of 0\.1 Hz"):
        load_config(config)
    config.write_text("[presets.knee]\nfrequency_hz = 2.5\npulse_width_us = 200\n")
    assert load_config(config).presets["knee"].frequency_hz == 2.5


def test_a_record_journalled_before_the_rule_still_reads(tmp_path: Path) -> None:
    """A journal may hold a plan an older estim took off the grid: it still reads, as
    it was stored (a record is not rewritten), while a new plan is refused."""
    old = session_plan({**GOOD, "frequency_hz": 4.26, "amplitude_ma": 5.0004}, dwell=90.0004)
    with Journal(tmp_path / "estim.db") as journal:
        sid = journal.begin(
            0x0A1B2C3D,
            plan=old,
            unit={"model": "estim-sim", "serial_number": "S1", "firmware": "1", "simulated": True},
            port="sim://",
            planned_ms=90_000,
        )
        record = journal.get(sid)
    channel = record.plan.channels[0]
    assert (channel.frequency_hz, channel.amplitude_ma, record.plan.dwell) == (
        4.26,
        5.0004,
        90.0004,
    )
    with pytest.raises(PlanError, match="not a multiple of"):
        SessionPlan.model_validate(old)
