"""The pytest plugin (``estim.pytest_plugin``), as a user's test suite sees it: each
test writes a small test file and runs pytest on it with ``pytester``.

The ``estim_unit`` marker takes every simulator option README lists (the names of
``sim://`` URL queries and ``estim simulate``), faults apply to the unit, link
options to ``estim_url``, a bad option is a one-line error naming it, and every
fixture documents itself in ``pytest --fixtures``.
"""

from __future__ import annotations

import re

import pytest

from estim.sim.options import ALL_OPTIONS

ARGS = ("-p", "no:cacheprovider")

#: a one-minute session on channel 1 (5 mA), run with the plugin's fixtures
SESSION = """
import estim
import re

import pytest


def run(url, tmp_path, amplitude_ma=5):
    plan = estim.SessionPlan(
        dwell="1m",
        channels=[
            estim.ChannelPlan(
                channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=amplitude_ma
            )
        ],
    )
    with estim.connect(url) as device, estim.Journal(tmp_path / "j.db") as journal:
        return device.start(plan, journal=journal).wait(timeout=120)
"""


def test_readme_s_simulator_options_are_all_marker_options() -> None:
    # README.md, "The simulated unit, for your tests": the names listed there
    from tests.vectors import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = readme.split("Options (URL query or `estim simulate` arguments)")[1].split("###")[0]
    for name in ALL_OPTIONS:
        assert f"`{name}" in listed, name


@pytest.mark.parametrize(
    ("option", "fault", "channel"),
    [
        ('lead_off_at="30:1"', "LEAD_OFF", 1),
        ('impedance_at="30:1:25000"', "LEAD_OFF", 1),
        ('over_current_at="30"', "OVER_CURRENT", 1),
        ("estop_at=30", "ESTOP", 0),
        ("internal_at=30.0", "INTERNAL", 0),
    ],
)
def test_a_fault_option_faults_the_session_at_that_time(
    pytester: pytest.Pytester, option: str, fault: str, channel: int
) -> None:
    pytester.makepyfile(
        SESSION
        + f"""

@pytest.mark.estim_unit({option})
def test_fault(estim_url, estim_unit, tmp_path):
    record = run(estim_url, tmp_path)
    assert record.outcome == "faulted", record
    assert "{fault}" in record.stop_reason
    assert record.delivered_s == 30.0
    (fault,) = estim_unit.events("fault")
    assert (fault.data["fault"], fault.data["channel"]) == ("{fault}", {channel})
    assert not estim_unit.output_on
"""
    )
    pytester.runpytest(*ARGS).assert_outcomes(passed=1)


def test_a_reset_option_restarts_the_unit_mid_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        SESSION
        + """

@pytest.mark.estim_unit(reset_at=20)
def test_reset(estim_url, estim_unit, tmp_path):
    record = run(estim_url, tmp_path)
    assert record.outcome == "faulted"
    assert "restarted" in record.stop_reason
    assert estim_unit.events("boot")[-1].data["cause"] == "RESET"
"""
    )
    pytester.runpytest(*ARGS).assert_outcomes(passed=1)


def test_a_repeatable_option_takes_a_list_and_the_first_fault_ends_the_session(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        SESSION
        + """

@pytest.mark.estim_unit(estop_at=[40, 25], channels=2, lead_off_at=["50:2"])
def test_faults(estim_url, tmp_path):
    record = run(estim_url, tmp_path)
    assert "ESTOP" in record.stop_reason
    assert record.delivered_s == 25.0
"""
    )
    pytester.runpytest(*ARGS).assert_outcomes(passed=1)


def test_unit_options_set_the_limits_in_the_units_people_use(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        SESSION
        + """

@pytest.mark.estim_unit(
    amplitude_max_ma=30, channels=4, dwell_max_s=300, model="ACME-4", serial="A0001"
)
def test_limits(estim_url, estim_unit, tmp_path):
    with estim.connect(estim_url) as device:
        info = device.info
    assert (info.channels, info.amplitude_max_ma, info.dwell_max_s) == (4, 30.0, 300.0)
    assert (info.model, info.serial_number) == ("ACME-4", "A0001")
    assert estim_unit.config.amplitude_max_ua == 30_000
    with pytest.raises(estim.OutputLimitError, match="above the unit's maximum 30 mA"):
        run(estim_url, tmp_path, amplitude_ma=31)
"""
    )
    pytester.runpytest(*ARGS).assert_outcomes(passed=1)


def test_link_options_reach_estim_url_and_not_the_bare_unit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        SESSION
        + """
from urllib.parse import parse_qs, urlsplit


@pytest.mark.estim_unit(drop=0.01, corrupt=0.02, duplicate=0.03, delay=0.5, delay_ms=2, seed=7)
def test_query(estim_url):
    parts = urlsplit(estim_url)
    assert parts.scheme == "sim" and parts.netloc.startswith("unit")
    assert parse_qs(parts.query) == {
        "drop": ["0.01"], "corrupt": ["0.02"], "duplicate": ["0.03"],
        "delay": ["0.5"], "delay_ms": ["2"], "seed": ["7"],
    }


@pytest.mark.estim_unit(drop=0.002, corrupt=0.001, seed=3)
def test_lossy(estim_url, tmp_path):
    plan = estim.SessionPlan(
        dwell="1m",
        channels=[estim.ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)],
    )
    with estim.connect(estim_url) as device, estim.Journal(tmp_path / "j.db") as journal:
        record = device.start(plan, journal=journal).wait(timeout=120)
        stats = device.stats
    assert record.outcome == "completed"  # retries ride out a lossy line
    assert stats.retries + stats.rejected_frames > 0  # and it was lossy


@pytest.mark.estim_unit(cut_at="10:100", baud=115200)
def test_cut(estim_url, estim_unit, tmp_path):
    assert "cut_at=10%3A100" in estim_url and "baud=115200" in estim_url
    record = run(estim_url, tmp_path)
    assert record.outcome == "link_lost"
    assert estim_unit.events("fault")[-1].data["fault"] == "WATCHDOG"


@pytest.mark.estim_unit(channels=2)
def test_no_link_option_no_query(estim_url):
    assert "?" not in estim_url
"""
    )
    pytester.runpytest(*ARGS).assert_outcomes(passed=4)


def test_the_unit_config_field_spelling_still_works(pytester: pytest.Pytester) -> None:
    # tests/test_conformance.py and tests/test_sim_url.py use it; so may users' suites
    pytester.makepyfile(
        """
import re

import pytest


@pytest.mark.estim_unit(dwell_min_ms=2_000, serial_number="MARKED", waveforms=0b011)
def test_fields(estim_unit):
    assert estim_unit.config.dwell_min_ms == 2_000
    assert estim_unit.config.serial_number == "MARKED"
    assert estim_unit.config.waveforms == 0b011


@pytest.mark.estim_unit(dwell_min_s=2, lead_off_at=5, amplitude_step_ua=200)
def test_mixed(estim_unit):
    assert (estim_unit.config.dwell_min_ms, estim_unit.config.amplitude_step_ua) == (2_000, 200)
"""
    )
    pytester.runpytest(*ARGS).assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('lead_off_at="soon"', "sim option lead_off_at='soon' is not a number"),
        ('lead_off_at="30:3"', "lead_off_at: channel 3 does not exist (1..2)"),
        ("frobnicate=1", "unknown option 'frobnicate'"),
        ("drop=2", "sim option drop=2 is outside 0..1"),
        ("channels=[2, 3]", "sim option 'channels' given 2 times"),
        ("estop_at=True", "estop_at=True is not a number or text"),
        ("dwell_min_s=2, dwell_min_ms=2000", "dwell_min_ms and dwell_min_s both set"),
        ("amplitude_step_ua=5000", "at most 1% of amplitude_max_ua=50000"),
        ("'sim://unit1'", "takes keyword options only"),
    ],
)
def test_a_bad_option_is_a_one_line_error_naming_it(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makepyfile(
        f"""
import re

import pytest


@pytest.mark.estim_unit({marker})
def test_marked(estim_url):
    pass


def test_other(estim_unit):
    pass
"""
    )
    result = pytester.runpytest(*ARGS)
    result.assert_outcomes(errors=1, passed=1)
    out = result.outlines
    start = next(i for i, line in enumerate(out) if "ERROR at setup of test_marked" in line)
    end = next(i for i, line in enumerate(out) if i > start and line.startswith("====="))
    # the error is one line naming the marker and the option: no traceback, no plugin code
    assert out[start + 1 : end] == [f"@pytest.mark.estim_unit: {out[start + 1].split(': ', 1)[1]}"]
    assert message in out[start + 1], out[start + 1]


def test_every_fixture_has_a_docstring_in_pytest_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest(*ARGS, "--fixtures")
    out = result.stdout.str()
    plugin = out[out.index("estim_clock") :]
    for name in ("estim_clock", "estim_unit", "estim_url", "estim_port"):
        section = plugin[plugin.index(name) :].split("\n\n")[0]
        assert "no docstring available" not in section, section
    result.stdout.fnmatch_lines(
        [
            "*estim_clock*",
            "*ManualClock*virtual time*",
            "*estim_unit*",
            "*SimulatedUnit*@pytest.mark.estim_unit*",
            "*estim_url*",
            "*sim://*",
            "*estim_port*",
            "*--estim-port*",
        ]
    )


def test_verbose_fixtures_document_the_marker_and_the_injection_methods(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    out = pytester.runpytest(*ARGS, "--fixtures", "-v").stdout.str()
    for text in (
        "lead_off_at",
        "impedance_at",
        "over_current_at",
        "estop_at",
        "reset_at",
        "internal_at",
        "amplitude_max_ma",
        "cut_at",
        "inject_in_session",
        "inject_at",
        "pull_electrode",
        "press",
        "reset",
        "clock.advance",
    ):
        assert text in out, text


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*ARGS, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.estim_unit(*OPTION=VALUE*"])
    pytester.makepyfile(
        """
import re

import pytest


@pytest.mark.estim_unit(channels=4)
def test_marked(estim_unit):
    assert estim_unit.config.channels == 4
"""
    )
    pytester.runpytest(*ARGS, "--strict-markers").assert_outcomes(passed=1)


def test_inject_in_session_from_a_test_as_documented(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        SESSION
        + """
from estim.protocol import Button


def test_inject(estim_url, estim_unit, tmp_path):
    estim_unit.inject_in_session(12.5, "over_current", 1)
    record = run(estim_url, tmp_path)
    assert "OVER_CURRENT" in record.stop_reason and record.delivered_s == 12.5


def test_press_and_clear(estim_url, estim_unit, estim_clock):
    estim_unit.press(Button.ESTOP)
    with estim.connect(estim_url) as device:
        assert device.status().state.name == "FAULT"
        device.clear_fault()
        assert device.status().state.name == "IDLE"
"""
    )
    pytester.runpytest(*ARGS).assert_outcomes(passed=2)


def test_estim_port_is_skipped_without_the_option_and_given_with_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
def test_on_hardware(estim_port):
    assert estim_port == "/dev/ttyFAKE0"


def test_simulated(estim_url):
    assert estim_url.startswith("sim://")
"""
    )
    result = pytester.runpytest(*ARGS, "-rs")
    result.assert_outcomes(skipped=1, passed=1)
    result.stdout.fnmatch_lines(["*no real unit: pass --estim-port PORT*"])
    pytester.runpytest(*ARGS, "--estim-port", "/dev/ttyFAKE0").assert_outcomes(passed=2)


def test_the_readme_example_passes(pytester: pytest.Pytester) -> None:
    from tests.vectors import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The pytest plugin")[1].split("\n## ")[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    pytester.makepyfile(code)
    pytester.runpytest(*ARGS).assert_outcomes(passed=1)
