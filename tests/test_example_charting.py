"""examples/charting_app.py runs a plan on a simulated unit, streams its events and
files the session as a FHIR bundle and an HTML report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fhir.resources.R4B.bundle import Bundle

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "charting_app.py"
PLAN = {
    "dwell": "1m",
    "ramp": "5s",
    "patient_ref": "P-0042",
    "clinician": "Dr Ada Lovelace",
    "site": "left vastus lateralis",
    "channels": [{"channel": 1, "frequency_hz": 2, "pulse_width_us": 250, "amplitude_ma": 12}],
}


def test_the_example_runs_a_plan_and_files_it(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    out = tmp_path / "chart"
    done = subprocess.run(
        [sys.executable, str(APP), str(plan), str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [line.get("kind") for line in lines[:-1]]
    assert kinds[:4] == ["start_requested", "start_accepted", "output_started", "ramp_done"]
    assert kinds[-1] == "ended"
    final = lines[-1]
    assert (final["outcome"], final["delivered_s"]) == ("completed", 60.0)
    sid = final["session"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("estim.db")) == [
        f"{sid}.fhir.json",
        f"{sid}.html",
    ]
    bundle = Bundle.model_validate_json((out / f"{sid}.fhir.json").read_text())
    procedure = next(
        e.resource for e in bundle.entry or [] if e.resource.get_resource_type() == "Procedure"
    )
    assert procedure.status == "completed"
    html = (out / f"{sid}.html").read_text()
    assert "P-0042" in html
    assert html.count("<svg") == 1


def test_the_example_reads_the_plan_from_stdin_and_refuses_a_bad_one(tmp_path: Path) -> None:
    bad = dict(PLAN, dwell="11m")
    done = subprocess.run(
        [sys.executable, str(APP), "-", str(tmp_path / "chart")],
        input=json.dumps(bad),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "outside 60-600 s" in done.stderr
    assert not (tmp_path / "chart").exists()


def run_app(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(APP), *args], capture_output=True, text=True, timeout=120
    )


def test_a_plan_the_unit_refuses_is_one_line(
    tmp_path: Path,
) -> None:
    plan = tmp_path / "plan.json"
    over = dict(PLAN, channels=[dict(PLAN["channels"][0], amplitude_ma=900)])  # type: ignore[call-overload]
    plan.write_text(json.dumps(over))
    done = run_app(str(plan), str(tmp_path / "chart"))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "charting_app: channel 1: amplitude 900 mA is above the unit's maximum 50 mA"
    ]
    assert done.stdout == ""


def test_a_plan_file_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    done = run_app(str(tmp_path / "missing.json"), str(tmp_path / "chart"))
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("charting_app: cannot read the plan: ")
    assert "missing.json" in line
    assert not (tmp_path / "chart").exists()
