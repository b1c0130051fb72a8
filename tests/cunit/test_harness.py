"""The C reference unit's build and its POSIX pty harness: a plain strict build, a
core without heap or floating point, options, signals, a host that reopens the port."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from estim.protocol import ConfigureChannel, GetStatus, Hello, Mode, Start, Waveform
from tests.cbuild import CORE, SOURCES, Build, compile_c
from tests.vectors import load

from .refunit import RefUnit

#: what the device core may call: no heap, no stdio, no floating point helpers
ALLOWED = {"memcpy", "memset", "memcmp", "memchr", "strlen"}


def test_the_plain_strict_build_and_what_the_core_calls(tmp_path: Path) -> None:
    compile_c(tmp_path / "estim-ref-c", ["posix_pty.c", *CORE], ["-O2"])
    nm = shutil.which("nm")
    assert nm is not None
    for source in CORE:
        obj = tmp_path / source.replace(".c", ".o")
        compile_c(obj, [source], ["-O2", "-c"])
        undefined = subprocess.run([nm, "-u", str(obj)], capture_output=True, text=True).stdout
        called = {
            name for name in undefined.split() if name != "U" and not name.startswith("estim_")
        }
        assert called <= ALLOWED, undefined
        text = (SOURCES / source).read_text()
        assert not re.search(r"\b(float|double)\b", text)  # the heap: nm above


def test_defaults_are_the_reference_unit_of_section_13(cunit: Build) -> None:
    typical = next(v for v in load("responses") if v["name"] == "DEVICE_INFO typical")
    with RefUnit(cunit.unit) as unit:
        info = unit.exchange(Hello(seq=1, min_version=1, max_version=1))[0]
    skip = {"seq", "model", "serial_number", "firmware"}
    assert {k: v for k, v in info.items() if k not in skip} == {
        k: v for k, v in typical["message"].items() if k not in skip
    }
    assert info["flags"] & 1  # simulated
    assert info["model"] == "estim-ref-c"


def test_options_set_the_limits(cunit: Build) -> None:
    options = [
        "channels=4",
        "amplitude_max_ma=20",
        "amplitude_step_ma=0.2",
        "slew_ma_per_s=2.5",
        "frequency_min_hz=0.5",
        "frequency_max_hz=100",
        "pulse_width_min_us=100",
        "pulse_width_max_us=300",
        "watchdog_min_ms=300",
        "watchdog_max_ms=1000",
        "dwell_min_s=1.5",
        "dwell_max_s=60",
        "ramp_max_s=10",
        "lead_off_ohm=15000",
        "model=bench unit",
        "serial=XY-42",
    ]
    with RefUnit(cunit.unit, *options) as unit:
        info = unit.exchange(Hello(seq=1, min_version=1, max_version=1))[0]
    assert (info["channel_count"], info["amplitude_max_ua"], info["amplitude_step_ua"]) == (
        4,
        20000,
        200,
    )
    assert (info["slew_max_ua_per_s"], info["frequency_min_dhz"], info["frequency_max_dhz"]) == (
        2500,
        5,
        1000,
    )
    assert (info["pulse_width_min_us"], info["pulse_width_max_us"]) == (100, 300)
    assert (info["watchdog_min_ms"], info["watchdog_max_ms"]) == (300, 1000)
    assert (info["dwell_min_ms"], info["dwell_max_ms"], info["ramp_max_ms"]) == (1500, 60000, 10000)
    assert (info["lead_off_ohm"], info["model"], info["serial_number"]) == (
        15000,
        "bench unit",
        "XY-42",
    )


@pytest.mark.parametrize(
    "option",
    [
        "colour=blue",
        "channels=9",
        "channels=two",
        "amplitude_step_ma=0.0001",
        "amplitude_step_ma=5",  # more than 1% of the maximum
        "dwell_min_s=700",  # above dwell_max_s
        "model=" + "x" * 33,
        "--tcp",
    ],
)
def test_a_bad_option_is_one_line_and_exit_2(cunit: Build, option: str) -> None:
    done = subprocess.run([str(cunit.unit), option], capture_output=True, text=True, timeout=10)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_ends_it_cleanly_with_output_off(cunit: Build, sig: signal.Signals) -> None:
    unit = RefUnit(cunit.unit, "dwell_min_s=2")
    try:
        unit.exchange(
            ConfigureChannel(
                seq=1,
                channel=1,
                waveform=Waveform.BIPHASIC_SYMMETRIC,
                mode=Mode.CONTINUOUS,
                frequency_dhz=20,
                pulse_width_us=250,
                amplitude_ua=1000,
                alt_frequency_dhz=0,
                switch_ms=0,
            )
        )
        unit.exchange(
            Start(seq=2, session_id=7, dwell_ms=2000, ramp_ms=200, watchdog_ms=2000, channel_mask=1)
        )
        unit.wait_for(lambda e: e["kind"] == "level" and e["ua"] > 0)
    finally:
        unit.close(sig)  # exit 0, stderr empty
    levels = [e["ua"] for e in unit.lines if e["kind"] == "level"]
    assert levels[-1] == 0


def test_a_host_may_close_and_reopen_the_port(cunit: Build) -> None:
    with RefUnit(cunit.unit) as unit:
        for seq in range(3):
            unit.link.close()
            unit.link.open()
            assert unit.exchange(GetStatus(seq=seq))[0]["state"] == "IDLE"
