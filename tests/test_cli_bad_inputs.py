"""Every bad input: one line on stderr naming the value (and the allowed range),
the documented exit code, and the unit never sees a START."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from estim.cli import cli
from estim.protocol import MessageType
from estim.sim import SimulatedUnit

GOOD = ["-c", "1:2:250:5"]

# (id, arguments after "run --port URL", expected exit code, text the one line must contain)
RUN_CASES: list[tuple[str, list[str], int, str]] = [
    (
        "an amplitude over the most allowed names its channel",
        ["--dwell", "1m", "-c", "2:2:250:5000"],
        2,
        "channel 2: amplitude_ma 5000 mA is above 1000 mA, the most allowed",
    ),
    ("dwell 0", ["--dwell", "0", *GOOD], 2, "dwell '0' is outside 60-600 s"),
    ("dwell 59s", ["--dwell", "59s", *GOOD], 2, "dwell '59s' is outside 60-600 s"),
    ("dwell 59", ["--dwell", "59", *GOOD], 2, "outside 60-600 s"),
    ("dwell 601s", ["--dwell", "601s", *GOOD], 2, "dwell '601s' is outside 60-600 s"),
    ("dwell 11m", ["--dwell", "11m", *GOOD], 2, "dwell '11m' is outside 60-600 s"),
    ("dwell 10m1s", ["--dwell", "10m1s", *GOOD], 2, "outside 60-600 s"),
    ("dwell -5", ["--dwell", "-5", *GOOD], 2, "dwell '-5' is outside 60-600 s"),
    ("dwell abc", ["--dwell", "abc", *GOOD], 2, "dwell 'abc' is not a duration"),
    ("dwell NaN", ["--dwell", "NaN", *GOOD], 2, "dwell 'nan' is not a duration"),
    ("dwell inf", ["--dwell", "inf", *GOOD], 2, "is not a duration"),
    ("dwell empty", ["--dwell", "", *GOOD], 2, "dwell is empty"),
    ("dwell 1:60", ["--dwell", "1:60", *GOOD], 2, "must be below 60"),
    ("dwell 0:59", ["--dwell", "0:59", *GOOD], 2, "outside 60-600 s"),
    ("dwell 5m5m", ["--dwell", "5m5m", *GOOD], 2, "is not a duration"),
    (
        "amplitude above the unit's max",
        ["--dwell", "1m", "-c", "1:2:250:51"],
        2,
        "amplitude 51 mA is above the unit's maximum 50 mA",
    ),
    (
        "amplitude 0",
        ["--dwell", "1m", "-c", "1:2:250:0"],
        2,
        "-c 1:2:250:0: amplitude 0 mA must be above 0 mA",
    ),
    (
        "amplitude negative (issue 18: no internal field path)",
        ["--dwell", "1m", "-c", "1:2:250:-5"],
        2,
        "estim: -c 1:2:250:-5: amplitude -5 mA must be above 0 mA",
    ),
    (
        "amplitude off the step",
        ["--dwell", "1m", "-c", "1:2:250:12.05"],
        2,
        "not a multiple of the unit's step 0.1 mA",
    ),
    (
        "amplitude nan",
        ["--dwell", "1m", "-c", "1:2:250:nan"],
        2,
        "amplitude 'nan' is not a finite number",
    ),
    (
        "amplitude text",
        ["--dwell", "1m", "-c", "1:2:250:lots"],
        2,
        "amplitude 'lots' is not a number",
    ),
    (
        "frequency below the unit's",
        ["--dwell", "1m", "-c", "1:0.5:250:5"],
        2,
        "frequency 0.5 Hz is outside the unit's 1-150 Hz",
    ),
    (
        "frequency above the unit's",
        ["--dwell", "1m", "-c", "1:151:250:5"],
        2,
        "frequency 151 Hz is outside the unit's 1-150 Hz",
    ),
    (
        "frequency 0",
        ["--dwell", "1m", "-c", "1:0:250:5"],
        2,
        "-c 1:0:250:5: frequency 0 Hz must be above 0",
    ),
    (
        "pulse width below the unit's",
        ["--dwell", "1m", "-c", "1:2:49:5"],
        2,
        "pulse width 49 us is outside the unit's 50-500 us",
    ),
    (
        "pulse width above the unit's",
        ["--dwell", "1m", "-c", "1:2:501:5"],
        2,
        "pulse width 501 us is outside the unit's 50-500 us",
    ),
    (
        "pulse width fractional",
        ["--dwell", "1m", "-c", "1:2:250.5:5"],
        2,
        "pulse width '250.5' must be whole microseconds",
    ),
    ("pulses overlap", ["--dwell", "1m", "-c", "1:1500:400:5"], 2, "overlap"),
    (
        "unknown channel",
        ["--dwell", "1m", "-c", "3:2:250:5"],
        2,
        "channel 3 does not exist on this unit (it has 2)",
    ),
    (
        "channel 0",
        ["--dwell", "1m", "-c", "0:2:250:5"],
        2,
        "channel '0' must be a whole number 1-8",
    ),
    (
        "channel 9",
        ["--dwell", "1m", "-c", "9:2:250:5"],
        2,
        "channel '9' must be a whole number 1-8",
    ),
    (
        "duplicate channel",
        ["--dwell", "1m", "-c", "1:2:250:5", "-c", "1:2:250:6"],
        2,
        "channel 1 appears more than once",
    ),
    (
        "unknown preset",
        ["--dwell", "1m", "--preset", "nope", "-c", "1:5"],
        2,
        "unknown preset 'nope'; known: edn-low",
    ),
    ("CH:MA without a preset", ["--dwell", "1m", "-c", "1:5"], 2, "CH:MA needs --preset"),
    (
        "a preset and a full channel (issue 18: it ran the -c values silently)",
        ["--dwell", "1m", "--preset", "edn-high", "-c", "1:2:250:5"],
        2,
        "-c 1:2:250:5 sets its own frequency and pulse width, and --preset edn-high sets them "
        "too; give -c CH:MA with the preset, or drop --preset",
    ),
    (
        "malformed -c, three parts",
        ["--dwell", "1m", "-c", "1:2:250"],
        2,
        "is not CH:FREQ_HZ:PW_US:MA",
    ),
    ("malformed -c, words", ["--dwell", "1m", "-c", "abc"], 2, "'abc' is not CH:FREQ_HZ:PW_US:MA"),
    (
        "malformed -c, five parts",
        ["--dwell", "1m", "-c", "1:2:250:5:7"],
        2,
        "is not CH:FREQ_HZ:PW_US:MA",
    ),
    ("no channel", ["--dwell", "1m"], 2, "no channel given"),
    (
        "ramp faster than the unit slews",
        ["--dwell", "1m", "-c", "1:2:250:12", "--ramp", "1s"],
        2,
        "use a ramp of at least 1.2 s",
    ),
    (
        "ramp longer than half the dwell",
        ["--dwell", "1m", *GOOD, "--ramp", "31"],
        2,
        "more than half the dwell",
    ),
    ("ramp negative", ["--dwell", "1m", *GOOD, "--ramp", "-1"], 2, "ramp '-1' is negative"),
    (
        "ramp beyond the unit's",
        ["--dwell", "10m", *GOOD, "--ramp", "45"],
        2,
        "longer than the unit's 30 s",
    ),
    (
        "watchdog too short",
        ["--dwell", "1m", *GOOD, "--watchdog", "0.1"],
        2,
        "0.1 is not in the range 0.2<=x<=2.0",
    ),
    (
        "unknown waveform",
        ["--dwell", "1m", *GOOD, "--waveform", "square"],
        2,
        "'square' is not one of",
    ),
    ("unknown option", ["--dwell", "1m", *GOOD, "--bogus"], 2, "No such option '--bogus'"),
    ("missing dwell", [*GOOD], 2, "Missing option '--dwell'"),
    (
        "patient reference too long",
        ["--dwell", "1m", *GOOD, "--patient", "x" * 201],
        2,
        "at most 200 characters",
    ),
]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("ESTIM_HOME", str(tmp_path / "home"))
    for name in ("ESTIM_PORT", "ESTIM_DB", "ESTIM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def assert_one_line(stderr: str, expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("estim: ")
    assert expected in lines[0]
    url = next((w for w in lines[0].split() if "://" in w), None)
    if url is not None:
        assert lines[0].count(url.rstrip(":;,.")) == 1, f"said twice: {lines[0]}"


@pytest.mark.parametrize(
    ("args", "code", "expected"), [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES]
)
def test_bad_run_input(
    runner: CliRunner,
    estim_url: str,
    estim_unit: SimulatedUnit,
    args: list[str],
    code: int,
    expected: str,
) -> None:
    result = runner.invoke(
        cli, ["run", "--port", estim_url, "--yes", *args], catch_exceptions=False
    )
    assert result.exit_code == code
    assert_one_line(result.stderr, expected)
    assert estim_unit.requests_seen[MessageType.START] == 0
    assert estim_unit.requests_seen[MessageType.CONFIGURE_CHANNEL] == 0
    assert not estim_unit.output_on


def test_the_catalogue_is_large_enough() -> None:
    assert len(RUN_CASES) + len(OTHER_CASES) + 6 >= 40


def test_no_port_says_so_and_lists_ports_with_sim(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["run", "--dwell", "1m", *GOOD, "--yes"])
    assert result.exit_code == 2
    assert_one_line(
        result.stderr, "no unit given: pass --port URL or set ESTIM_PORT; serial ports here:"
    )
    assert "sim://" in result.stderr


def test_a_port_that_does_not_exist(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["run", "--port", "/dev/ttyNOPE9", "--dwell", "1m", *GOOD, "--yes"])
    assert result.exit_code == 2
    assert_one_line(result.stderr, "port /dev/ttyNOPE9 does not exist; serial ports here:")


def test_a_busy_port(runner: CliRunner, estim_url: str, estim_unit: SimulatedUnit) -> None:
    from estim.device import connect

    with connect(estim_url):
        result = runner.invoke(cli, ["run", "--port", estim_url, "--dwell", "1m", *GOOD, "--yes"])
    assert result.exit_code == 5
    assert_one_line(result.stderr, f"port {estim_url} is busy")
    assert estim_unit.requests_seen[MessageType.START] == 0


def test_not_an_estim_unit(runner: CliRunner) -> None:
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        result = runner.invoke(cli, ["run", "--port", path, "--dwell", "1m", *GOOD, "--yes"])
    finally:
        os.close(master)
        os.close(slave)
    assert result.exit_code == 5
    assert_one_line(result.stderr, f"no estim unit answered on {path}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[limits\namplitude_max_ma = 10\n", "config.toml: Expected ']'"),
        ("[limits]\nbogus = 1\n", "config.toml:2: limits.bogus: unknown limit"),
        (
            '[limits]\ndwell_max = "11m"\n',
            "config.toml:2: limits.dwell_max: '11m' is outside 60..600; a clinic can only narrow",
        ),
        (
            '[limits]\namplitude_max_ma = "lots"\n',
            "config.toml:2: limits.amplitude_max_ma: 'lots' is not a number",
        ),
        (
            "[presets.Knee]\nfrequency_hz = 4\npulse_width_us = 200\n",
            "presets.Knee: a preset name is lowercase",
        ),
        ("[presets.knee]\npulse_width_us = 200\n", "presets.knee: missing frequency_hz"),
        (
            "[presets.knee]\nfrequency_hz = 4\npulse_width_us = 200\ncolour = 1\n",
            "config.toml:4: presets.knee.colour: unknown preset key",
        ),
        ("[surprise]\nx = 1\n", "config.toml:1: surprise: unknown section or key"),
    ],
)
def test_a_bad_config_file_names_file_line_and_key(
    runner: CliRunner,
    tmp_path: Path,
    estim_url: str,
    estim_unit: SimulatedUnit,
    text: str,
    expected: str,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(text)
    result = runner.invoke(cli, ["run", "--port", estim_url, "--dwell", "1m", *GOOD, "--yes"])
    assert result.exit_code == 2
    assert_one_line(result.stderr, expected)
    assert str(home / "config.toml") in result.stderr
    assert estim_unit.requests_seen[MessageType.START] == 0


def test_the_clinic_config_narrows_the_limits(
    runner: CliRunner, tmp_path: Path, estim_url: str, estim_unit: SimulatedUnit
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[limits]\namplitude_max_ma = 10\ndwell_max = "8m"\n')
    too_strong = runner.invoke(
        cli, ["run", "--port", estim_url, "--dwell", "1m", "-c", "1:2:250:12", "--yes"]
    )
    assert too_strong.exit_code == 2
    assert_one_line(too_strong.stderr, "amplitude 12 mA is above the clinic's maximum 10 mA")
    too_long = runner.invoke(cli, ["run", "--port", estim_url, "--dwell", "9m", *GOOD, "--yes"])
    assert too_long.exit_code == 2
    assert_one_line(too_long.stderr, "dwell 9 min is above the clinic's maximum 8 min")
    assert estim_unit.requests_seen[MessageType.START] == 0


# (id, full arguments, expected exit code, text)
OTHER_CASES: list[tuple[str, list[str], int, str]] = [
    ("show an unknown session", ["show", "deadbeef"], 2, "session 'deadbeef': no such session"),
    (
        "history since garbage",
        ["history", "--since", "yesterday-ish"],
        2,
        "--since 'yesterday-ish' is not a date",
    ),
    ("history until garbage", ["history", "--until", "soon"], 2, "--until 'soon' is not a date"),
    ("export an unknown format", ["export", "abc", "--format", "xml"], 2, "'xml' is not one of"),
    ("an unknown command", ["launch"], 2, "No such command 'launch'"),
    ("simulate with a bad option", ["simulate", "channels=0"], 2, "channels=0 is outside 1..8"),
    ("history with a bad outcome", ["history", "--outcome", "great"], 2, "'great' is not one of"),
    ("info without a port", ["info"], 2, "no unit given: pass --port URL or set ESTIM_PORT"),
    ("info on a missing port", ["info", "--port", "/dev/ttyNOPE9"], 2, "does not exist"),
    ("stop on a missing port", ["stop", "--port", "/dev/ttyNOPE9"], 2, "does not exist"),
    ("stop without a port", ["stop"], 2, "no unit given"),
    (
        "clear-fault on a missing port",
        ["clear-fault", "--port", "/dev/ttyNOPE9"],
        2,
        "does not exist",
    ),
    ("ports with an unknown option", ["ports", "--all"], 2, "No such option '--all'"),
    (
        "simulate on pty and tcp",
        ["simulate", "--pty", "--tcp", "7000"],
        2,
        "choose one of --pty and",
    ),
    (
        "simulate with a bad tcp port",
        ["simulate", "--tcp", "host:http"],
        2,
        "PORT must be a number",
    ),
    ("simulate with a bare word", ["simulate", "fast"], 2, "'fast' is not KEY=VALUE"),
    ("simulate an unknown option", ["simulate", "speed=9"], 2, "unknown sim option 'speed'"),
    ("show a missing journal", ["show", "abc", "--db", "/nonexistent/j.db"], 2, "no journal at"),
    ("history of a missing journal", ["history", "--db", "/nonexistent/j.db"], 2, "no journal at"),
    (
        "history of a file that is not a journal (issue 18: exit 6, 'could not be written')",
        ["history", "--db", "/etc/passwd"],
        2,
        "/etc/passwd is not an estim journal",
    ),
    (
        "nothing listening at a socket (issue 18: exit 2 where README says 5)",
        ["info", "--port", "socket://127.0.0.1:9"],
        5,
        "nothing is listening at socket://127.0.0.1:9",
    ),
    (
        "a bad sim:// option (issue 18: exit 5, the URL twice)",
        ["info", "--port", "sim://?channels=x"],
        2,
        "estim: sim://?channels=x: sim option channels='x' is not a number",
    ),
    (
        "a device that is not a serial port (issue 18: pyserial's raw text)",
        ["info", "--port", "/dev/null"],
        2,
        "estim: /dev/null is not a serial port; serial ports here:",
    ),
]


@pytest.mark.parametrize(
    ("args", "code", "expected"), [c[1:] for c in OTHER_CASES], ids=[c[0] for c in OTHER_CASES]
)
def test_bad_input_elsewhere(
    runner: CliRunner, tmp_path: Path, args: list[str], code: int, expected: str
) -> None:
    from estim.journal import Journal

    Journal(tmp_path / "j.db").close()  # an empty journal: reading commands never create one
    result = runner.invoke(
        cli,
        [
            *args,
            *(
                ["--db", str(tmp_path / "j.db")]
                if args[0] in ("show", "history", "export") and "--db" not in args
                else []
            ),
        ],
    )
    assert result.exit_code == code
    assert_one_line(result.stderr, expected)


@pytest.mark.parametrize(
    "command", [["presets"], ["run", "--dwell", "1m", "-c", "1:2:250:5", "--yes"]]
)
def test_a_config_file_named_in_estim_config_that_does_not_exist(
    runner: CliRunner,
    tmp_path: Path,
    estim_url: str,
    estim_unit: SimulatedUnit,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    # issue 13: a typo in ESTIM_CONFIG silently dropped the clinic's limits on main
    missing = tmp_path / "clinic" / "config.tmol"
    monkeypatch.setenv("ESTIM_CONFIG", str(missing))
    args = [*command, "--port", estim_url] if command[0] == "run" else command
    result = runner.invoke(cli, args)
    assert result.exit_code == 2
    assert_one_line(result.stderr, f"ESTIM_CONFIG names {missing}, which does not exist")
    assert estim_unit.requests_seen[MessageType.START] == 0


def test_a_clinic_limit_wider_than_the_unit_is_a_warning_and_the_unit_s_applies(
    runner: CliRunner, tmp_path: Path, estim_url: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[limits]\namplitude_max_ma = 80\n")
    result = runner.invoke(cli, ["run", "--port", estim_url, "--dwell", "1m", *GOOD, "--yes"])
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"estim: warning: the clinic's amplitude_max_ma 80 mA is above this unit's 50 mA; "
        f"the unit's applies (clinic config {home / 'config.toml'})"
    ]


def test_a_fault_in_estim_itself_is_one_line_exit_7_and_output_stopped(
    runner: CliRunner, estim_url: str, estim_unit: SimulatedUnit, monkeypatch: pytest.MonkeyPatch
) -> None:
    import estim.cli.run

    def broken(event: object, session_id: str) -> str:
        raise RuntimeError("a bug in the event printer")

    monkeypatch.setattr(estim.cli.run, "describe", broken)
    result = runner.invoke(cli, ["run", "--port", estim_url, "--dwell", "1m", *GOOD, "--yes"])
    assert result.exit_code == 7
    assert_one_line(
        result.stderr, "internal error in estim: RuntimeError('a bug in the event printer')"
    )
    assert not estim_unit.output_on
    assert estim_unit.events("output_off")[-1].data["reason"] == "stop"


@pytest.mark.parametrize("command", [["history"], ["run", "--dwell", "1m", *GOOD, "--yes"]])
def test_a_journal_that_is_not_a_journal_says_so(
    runner: CliRunner,
    tmp_path: Path,
    estim_url: str,
    estim_unit: SimulatedUnit,
    command: list[str],
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\n" * 100)
    port = ["--port", estim_url] if command[0] == "run" else []
    result = runner.invoke(cli, [*command, *port, "--db", str(notes)])
    assert result.exit_code == 2  # a wrong --db is bad usage (issue 18: it was 6, "not written")
    assert_one_line(result.stderr, f"{notes} is not an estim journal (or it is damaged)")
    assert notes.read_text() == "shopping list\n" * 100
    # nothing made beside it either (it left an empty notes.txt.locks/)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert estim_unit.requests_seen[MessageType.START] == 0


def test_a_journal_in_a_directory_that_does_not_exist_is_refused(
    runner: CliRunner, tmp_path: Path, estim_url: str, estim_unit: SimulatedUnit
) -> None:
    """A mistyped --db made the missing directories and ran the session into a journal
    nobody would look in."""
    db = tmp_path / "clinc" / "records" / "estim.db"
    result = runner.invoke(
        cli, ["run", "--port", estim_url, "--dwell", "1m", *GOOD, "--yes", "--db", str(db)]
    )
    assert result.exit_code == 2
    assert_one_line(
        result.stderr,
        f"estim: no directory {db.parent} for the journal {db}; create it first, or check --db",
    )
    assert not (tmp_path / "clinc").exists()
    assert estim_unit.requests_seen[MessageType.START] == 0


def test_a_directory_as_the_port_is_not_a_serial_port(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["info", "--port", str(tmp_path)])
    assert result.exit_code == 2  # it was 5, "cannot open", errno 21 said twice
    assert_one_line(result.stderr, f"estim: {tmp_path} is not a serial port; serial ports here:")


def test_a_journal_on_a_full_disk_says_what_to_check() -> None:
    import sqlite3

    from estim.journal import _open_problem

    text = _open_problem(Path("/clinic/estim.db"), sqlite3.OperationalError("disk I/O error"))
    assert text == (
        "cannot open the journal /clinic/estim.db: disk I/O error; check that its disk has free "
        "space and is writable"
    )
