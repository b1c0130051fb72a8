"""The CLI through click's CliRunner, against a served sim:// unit on a manual clock
(the run's own waiting drives virtual time, so a 1-minute session takes a second)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from estim.cli import cli
from estim.protocol import MessageType
from estim.sim import SimulatedUnit


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ESTIM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ESTIM_PORT", raising=False)
    monkeypatch.delenv("ESTIM_DB", raising=False)
    monkeypatch.delenv("ESTIM_CONFIG", raising=False)
    return tmp_path / "home"


@pytest.fixture
def runner(home: Path) -> CliRunner:
    return CliRunner()


def invoke(
    runner: CliRunner, *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> Result:
    return runner.invoke(cli, list(args), input=input, env=env, catch_exceptions=False)


def run_args(url: str, *extra: str, dwell: str = "1m") -> list[str]:
    return ["run", "--port", url, "--dwell", dwell, "-c", "1:2:250:5", *extra]


def test_a_completed_run(
    runner: CliRunner, estim_url: str, estim_unit: SimulatedUnit, home: Path
) -> None:
    result = invoke(
        runner, *run_args(estim_url, "--yes", "--patient", "P-7", "--site", "left vastus lateralis")
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Unit     estim-sim serial SIM-0001" in out
    assert "Channel 1  5 mA, 2 Hz, 250 us pulses, biphasic, symmetric" in out
    assert "ramp done: full amplitude" in out
    assert "COMPLETED: delivered 1 min of 1 min. The unit's own deadline ended it." in out
    on, off = estim_unit.events("output_on")[-1], estim_unit.events("output_off")[-1]
    assert off.t - on.t == 60.0
    # the record is in the default journal, in the app directory
    history = invoke(runner, "history", "--json")
    (row,) = json.loads(history.stdout)
    assert (row["outcome"], row["delivered_s"], row["patient_ref"], row["site"]) == (
        "completed",
        60.0,
        "P-7",
        "left vastus lateralis",
    )
    assert (home / "estim.db").exists()


def test_json_output_is_one_object_per_line_and_the_record_last(
    runner: CliRunner, estim_url: str, tmp_path: Path
) -> None:
    result = invoke(runner, *run_args(estim_url, "--yes", "--json", "--db", str(tmp_path / "j.db")))
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1]["record"]["outcome"] == "completed"
    assert lines[-1]["record"]["delivered_s"] == 60.0
    kinds = [line["kind"] for line in lines[:-1]]
    assert kinds[:2] == ["start_requested", "start_accepted"]
    assert "ramp_done" in kinds
    assert kinds[-1] == "ended"
    assert "Unit " in result.stderr  # the summary goes to stderr with --json


def test_confirmation_declined_starts_nothing(
    runner: CliRunner, estim_url: str, estim_unit: SimulatedUnit
) -> None:
    result = invoke(runner, *run_args(estim_url), input="n\n")
    assert result.exit_code == 1
    assert "Start stimulation?" in result.output
    assert estim_unit.requests_seen[MessageType.START] == 0


def test_confirmation_accepted(runner: CliRunner, estim_url: str, tmp_path: Path) -> None:
    result = invoke(runner, *run_args(estim_url, "--db", str(tmp_path / "j.db")), input="y\n")
    assert result.exit_code == 0


def test_preset_and_channel_amplitude(
    runner: CliRunner, estim_url: str, estim_unit: SimulatedUnit, tmp_path: Path
) -> None:
    result = invoke(
        runner,
        "run",
        "--port",
        estim_url,
        "--dwell",
        "60",
        "--preset",
        "dense-disperse",
        "-c",
        "1:8",
        "-c",
        "2:6",
        "--yes",
        "--db",
        str(tmp_path / "j.db"),
    )
    assert result.exit_code == 0, result.output
    assert "alternating with 100 Hz every 3 s" in result.stdout
    assert estim_unit.events("output_on")[-1].data["channels"] == [1, 2]


@pytest.mark.parametrize(
    ("option", "expected_exit", "outcome"),
    [
        ("lead_off", 4, "faulted"),
        ("over_current", 4, "faulted"),
        ("estop", 4, "faulted"),
    ],
)
def test_unit_faults_exit_4(
    runner: CliRunner,
    estim_url: str,
    estim_unit: SimulatedUnit,
    tmp_path: Path,
    option: str,
    expected_exit: int,
    outcome: str,
) -> None:
    args = (1,) if option != "estop" else ()
    estim_unit.inject_in_session(10.0, option, *args)
    result = invoke(runner, *run_args(estim_url, "--yes", "--db", str(tmp_path / "j.db")))
    assert result.exit_code == expected_exit
    assert "UNIT FAULT" in result.stdout
    assert not estim_unit.output_on


def test_link_lost_exits_5(
    runner: CliRunner, estim_url: str, estim_unit: SimulatedUnit, tmp_path: Path
) -> None:
    result = invoke(
        runner, *run_args(f"{estim_url}?cut_at=5:100", "--yes", "--db", str(tmp_path / "j.db"))
    )
    assert result.exit_code == 5
    assert "LINK LOST" in result.stdout


def test_a_journal_that_cannot_be_opened_exits_6_and_starts_nothing(
    runner: CliRunner, estim_url: str, estim_unit: SimulatedUnit, tmp_path: Path
) -> None:
    import sqlite3

    newer = tmp_path / "estim.db"  # a journal this estim cannot write: a newer schema
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 99")
    db.close()
    result = invoke(runner, *run_args(estim_url, "--yes", "--db", str(newer)))
    assert result.exit_code == 6
    assert len(result.stderr.strip().splitlines()) == 1
    assert "newer than this estim" in result.stderr
    assert estim_unit.requests_seen[MessageType.START] == 0
    # (a --db under a file, where no directory can be, is bad usage: exit 2)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = invoke(runner, *run_args(estim_url, "--yes", "--db", str(blocker / "estim.db")))
    assert result.exit_code == 2
    assert estim_unit.requests_seen[MessageType.START] == 0


def test_a_refused_start_for_an_open_electrode_exits_4(
    runner: CliRunner, estim_url: str, estim_unit: SimulatedUnit, tmp_path: Path
) -> None:
    estim_unit.pull_electrode(1)
    result = invoke(runner, *run_args(estim_url, "--yes", "--db", str(tmp_path / "j.db")))
    assert result.exit_code == 4
    assert "electrode not connected" in result.stderr
    assert not estim_unit.output_on


def test_info(runner: CliRunner, estim_url: str) -> None:
    result = invoke(runner, "info", "--port", estim_url)
    assert result.exit_code == 0
    assert "up to 50 mA in steps of 0.1 mA" in result.stdout
    data = json.loads(invoke(runner, "info", "--port", estim_url, "--json").stdout)
    assert (data["channels"], data["simulated"], data["dwell_max_s"]) == (2, True, 600.0)


def test_port_from_the_environment(runner: CliRunner, estim_url: str) -> None:
    result = invoke(runner, "info", env={"ESTIM_PORT": estim_url})
    assert result.exit_code == 0
    assert "estim-sim" in result.stdout


def test_ports_and_presets(runner: CliRunner) -> None:
    ports = invoke(runner, "ports")
    assert ports.exit_code == 0
    assert "sim://" in ports.stdout
    assert isinstance(json.loads(invoke(runner, "ports", "--json").stdout), list)
    presets = invoke(runner, "presets")
    assert {"edn-low", "edn-high", "dense-disperse"} <= {
        line.split()[0] for line in presets.stdout.splitlines()
    }


def test_clinic_presets_from_the_config_file(
    runner: CliRunner, home: Path, estim_url: str, tmp_path: Path
) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        '[presets.knee-low]\nfrequency_hz = 4\npulse_width_us = 200\ndescription = "knee, 4 Hz"\n'
    )
    assert "knee-low" in invoke(runner, "presets").stdout
    result = invoke(
        runner,
        "run",
        "--port",
        estim_url,
        "--dwell",
        "1m",
        "--preset",
        "knee-low",
        "-c",
        "1:6",
        "--yes",
        "--db",
        str(tmp_path / "j.db"),
    )
    assert result.exit_code == 0
    assert "Channel 1  6 mA, 4 Hz, 200 us pulses" in result.stdout


def test_stop_when_nothing_runs(
    runner: CliRunner, estim_url: str, estim_unit: SimulatedUnit
) -> None:
    result = invoke(runner, "stop", "--port", estim_url)
    assert result.exit_code == 0
    assert estim_unit.requests_seen[MessageType.STOP] >= 1


def test_clear_fault(runner: CliRunner, estim_url: str, estim_unit: SimulatedUnit) -> None:
    from estim.protocol import Button

    estim_unit.press(Button.ESTOP)
    result = invoke(runner, "clear-fault", "--port", estim_url)
    assert result.exit_code == 0
    assert "Cleared: ESTOP." in result.stdout
    assert estim_unit.faults == set()


def test_history_show_and_export(runner: CliRunner, estim_url: str, tmp_path: Path) -> None:
    db = str(tmp_path / "j.db")
    assert (
        invoke(runner, *run_args(estim_url, "--yes", "--db", db, "--patient", "P-1")).exit_code == 0
    )
    (row,) = json.loads(invoke(runner, "history", "--json", "--db", db).stdout)
    sid = row["id"]
    text = invoke(runner, "history", "--db", db).stdout
    assert sid in text
    assert "completed" in text
    assert invoke(runner, "history", "--patient", "P-2", "--db", db).stdout.startswith(
        "No sessions recorded that match"
    )
    shown = invoke(runner, "show", sid[:4], "--db", db)
    assert shown.exit_code == 0
    assert "delivered 60.000 s" in shown.stdout
    record = json.loads(invoke(runner, "show", sid, "--json", "--db", db).stdout)
    assert record["id"] == sid
    exported = invoke(runner, "export", sid, "--format", "csv", "--db", db).stdout.splitlines()
    assert exported[0].startswith("session,schema_version,patient_ref,clinician,")
    assert exported[1].startswith(f"{sid},1,P-1,")
    events = invoke(runner, "export", sid, "--format", "events-csv", "--db", db).stdout
    assert events.splitlines()[0].startswith("session,n,utc,local,t_s,unit_ms,kind,")
    assert any(",ramp_done," in line for line in events.splitlines())
    out = tmp_path / "s.json"
    assert (
        invoke(runner, "export", sid, "--format", "json", "-o", str(out), "--db", db).exit_code == 0
    )
    assert json.loads(out.read_text())["outcome"] == "completed"


def test_help_documents_exit_codes_and_completion(runner: CliRunner) -> None:
    top = invoke(runner, "--help").stdout
    assert "Exit codes: 0 the dwell completed" in top
    assert "_ESTIM_COMPLETE=bash_source" in top
    assert "6 the journal could not be written" in invoke(runner, "run", "--help").stdout


def test_no_arguments_prints_help(runner: CliRunner) -> None:
    result = invoke(runner)
    assert result.exit_code == 0
    assert "Commands:" in result.stdout


def test_estim_help_does_not_import_the_heavy_modules() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from estim.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('serial', 'pydantic', 'sqlite3', 'estim.session', 'estim.sim') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in done.stderr


def _events(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_the_exit_code_of_an_ending_says_who_ended_it(tmp_path: Path) -> None:
    from estim.cli.run import exit_code

    from .records_helpers import varied_journal

    record = varied_journal(tmp_path / "estim.db")[0]

    def code(**changes: Any) -> int:
        return exit_code(record.model_copy(update={"journal_error": None, **changes}))

    assert code(outcome="stopped", stop_reason="operator", ended_by=None) == 3
    # a unit that ended its dwell early: a fault of the unit, not the operator's stop
    assert code(outcome="stopped", stop_reason="the unit reported ...", ended_by="unit") == 4
    # a bug in estim (the session was stopped as a host error): README's 7
    assert code(outcome="aborted", stop_reason="internal error in estim: KeyError(1)") == 7
    assert code(outcome="aborted", stop_reason="journal: disk full") == 6
