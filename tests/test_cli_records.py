"""``estim history``, ``show`` and ``export`` on a journal real (simulated) sessions
wrote: local times, the clinician, records in words, every export format, and every
bad input as one line on stderr, exit code 2, and nothing written."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fhir.resources.R4B.bundle import Bundle

from estim.cli import cli
from estim.journal import Journal
from estim.record import SessionRecord

from .records_helpers import varied_journal


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SessionRecord]]:
    path = tmp_path_factory.mktemp("cli-records") / "estim.db"
    return path, varied_journal(path)


@pytest.fixture
def db(made: tuple[Path, list[SessionRecord]], tmp_path: Path) -> str:
    copy = tmp_path / "journal" / "estim.db"
    copy.parent.mkdir()
    shutil.copy(made[0], copy)
    Journal.open_existing(copy).close()  # the side files any open makes (the lock directory)
    return str(copy)


@pytest.fixture
def records(made: tuple[Path, list[SessionRecord]]) -> list[SessionRecord]:
    return made[1]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ESTIM_HOME", str(tmp_path / "home"))
    for name in ("ESTIM_DB", "ESTIM_PORT", "ESTIM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture
def in_new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "EST5EDT,M3.2.0,M11.1.0")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def one_error_line(result: Result, expected: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("estim: ")
    assert expected in lines[0], lines[0]
    assert result.stdout == ""


# --- history --------------------------------------------------------------------------------


def test_history_shows_local_time_and_the_clinician(
    home: Path, db: str, records: list[SessionRecord], in_new_york: None
) -> None:
    result = invoke("history", "--db", db)
    assert result.exit_code == 0
    header, *lines = result.stdout.splitlines()
    assert "started (local)" in header
    assert "clinician" in header
    assert [line.split()[0] for line in lines] == [r.id for r in reversed(records)]
    newest = records[-1]
    utc = datetime.fromisoformat(newest.created_utc.replace("Z", "+00:00"))
    assert utc.astimezone().strftime("%Y-%m-%d %H:%M") in lines[0]
    assert utc.strftime("%Y-%m-%d %H:%M") not in lines[0]
    grace = next(line for line in lines if line.startswith(records[1].id))
    assert "Dr Grace Hopper" in grace
    data = json.loads(invoke("history", "--json", "--db", db).stdout)
    assert data[0]["created_utc"] == newest.created_utc  # UTC stays in --json
    assert data[-1]["clinician"] == "Dr Ada Lovelace"
    assert data[-1]["condition"] == "knee osteoarthritis"


def test_history_filters_by_clinician_and_until(
    home: Path, db: str, records: list[SessionRecord]
) -> None:
    hopper = json.loads(
        invoke("history", "--clinician", "Dr Grace Hopper", "--json", "--db", db).stdout
    )
    assert [r["id"] for r in hopper] == [records[1].id]
    until = json.loads(
        invoke("history", "--until", records[2].created_utc, "--json", "--db", db).stdout
    )
    assert [r["id"] for r in until] == [records[1].id, records[0].id]
    none = invoke("history", "--clinician", "Dr Nobody", "--db", db)
    assert none.stdout == "No sessions recorded that match.\n"
    help_text = invoke("history", "--help").stdout
    assert "Show at most this many sessions" in help_text
    assert "--clinician" in help_text
    assert "--until" in help_text


# --- show -------------------------------------------------------------------------------------


def test_show_is_in_words(home: Path, db: str, records: list[SessionRecord]) -> None:
    text = invoke("show", records[0].id, "--db", db).stdout
    assert "None" not in text
    for raw in ("biphasic_symmetric", "dense_disperse", "ended_by=", "ma=", "{"):
        assert raw not in text, raw
    assert "Outcome   completed: the unit's own deadline ended it" in text
    assert "delivered 60.000 s by the unit's clock; ended by the unit's own deadline" in text
    assert "Channel 1 12 mA, 2 Hz, 250 us pulses, biphasic, symmetric" in text
    assert "Channel 2 8 mA, 2 Hz alternating with 100 Hz every 3 s, 200 us pulses" in text
    assert "Clinician Dr Ada Lovelace" in text
    assert "Notes     not recorded" in text
    assert "channel 1: amplitude set to 14 mA" in text
    assert "Faults    none" in text
    burst = invoke("show", records[3].id, "--db", db).stdout
    assert "100 Hz in bursts of 0.1 s, 2 bursts a second" in burst
    assert "biphasic, asymmetric" in burst
    refused = invoke("show", records[4].id[:6], "--db", db).stdout
    assert "Outcome   refused: nothing was delivered" in refused
    assert "Output    never on: nothing was delivered" in refused
    assert "Clinician not recorded" in refused
    faulted = invoke("show", records[2].id, "--db", db).stdout
    assert "Faults    LEAD_OFF (channel 1)" in faulted


# --- export -----------------------------------------------------------------------------------


def test_export_each_format(
    home: Path, db: str, records: list[SessionRecord], tmp_path: Path
) -> None:
    ids = [r.id for r in records]
    one = invoke("export", ids[0], "--format", "json", "--db", db)
    assert SessionRecord.model_validate_json(one.stdout) == records[0]
    several = invoke("export", ids[1], ids[0][:6], ids[1], "--format", "jsonl", "--db", db)
    assert [json.loads(line)["id"] for line in several.stdout.splitlines()] == [ids[1], ids[0]]
    everything = invoke("export", "--format", "csv", "--db", db).stdout.splitlines()
    assert [line.split(",")[0] for line in everything[1:]] == ids  # oldest first
    ada = invoke("export", "--clinician", "Dr Ada Lovelace", "--format", "csv", "--db", db)
    assert [line.split(",")[0] for line in ada.stdout.splitlines()[1:]] == [ids[0], ids[2], ids[3]]
    patient = invoke("export", "--patient", "P-0007", "--format", "events-csv", "--db", db)
    assert {line.split(",")[0] for line in patient.stdout.splitlines()[1:]} == {ids[3]}
    since = invoke("export", "--since", records[3].created_utc, "--format", "fhir", "--db", db)
    bundle = Bundle.model_validate_json(since.stdout)
    assert bundle.entry is not None
    assert sum(e.resource.get_resource_type() == "Procedure" for e in bundle.entry) == 2
    report = tmp_path / "report.html"
    done = invoke("export", ids[0], "--format", "html", "-o", str(report), "--db", db)
    assert done.exit_code == 0
    assert done.stdout == ""
    assert report.read_text().startswith("<!DOCTYPE html>")
    assert oct(report.stat().st_mode & 0o777) == "0o600"  # patient data, private like the journal
    help_text = invoke("export", "--help").stdout
    for name in ("jsonl", "events-csv", "fhir", "html"):
        assert f"{name}:" in help_text


def test_export_refuses_to_overwrite_without_force(
    home: Path, db: str, records: list[SessionRecord], tmp_path: Path
) -> None:
    target = tmp_path / "out.csv"
    target.write_text("precious\n")
    refused = invoke("export", "--format", "csv", "-o", str(target), "--db", db)
    one_error_line(refused, f"-o {target} exists; add --force to replace it")
    assert target.read_text() == "precious\n"
    assert sorted(os.listdir(tmp_path)) == ["journal", "out.csv"]  # no temporary file left
    forced = invoke("export", "--format", "csv", "-o", str(target), "--force", "--db", db)
    assert forced.exit_code == 0
    assert target.read_text().startswith("session,")
    assert sorted(os.listdir(tmp_path)) == ["journal", "out.csv"]


def test_an_empty_selection_is_a_valid_empty_export(home: Path, db: str) -> None:
    result = invoke("export", "--patient", "P-404", "--format", "csv", "--db", db)
    assert result.exit_code == 0
    assert result.stdout.startswith("session,schema_version,")
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr == "estim: no session matches; the csv export is empty\n"


# --- bad inputs: one line, exit 2, nothing written ----------------------------------------------


BAD_EXPORTS: list[tuple[str, list[str], str]] = [
    (
        "json of several",
        ["--format", "json"],
        "--format json holds exactly one session and 5 sessions match",
    ),
    (
        "html of several",
        ["--format", "html", "--since", "2000-01-01"],
        "--format html holds exactly one session and 5",
    ),
    (
        "html of none",
        ["--format", "html", "--patient", "P-404"],
        "--format html holds exactly one session and no session matches",
    ),
    (
        "ids and filters",
        ["ID0", "--patient", "P-0042", "--format", "csv"],
        "give session ids or --patient, not both",
    ),
    ("unknown session", ["ffffffff", "--format", "csv"], "session 'ffffffff': no such session"),
    ("ambiguous empty prefix", ["", "--format", "csv"], "session '': no such session"),
    (
        "bad --since",
        ["--since", "last tuesday", "--format", "csv"],
        "--since 'last tuesday' is not a date",
    ),
    (
        "bad --until",
        ["--until", "2026-13-40", "--format", "csv"],
        "--until '2026-13-40' is not a date",
    ),
    ("unknown format", ["--format", "xml"], "'xml' is not one of"),
    (
        "output in a missing directory",
        ["--format", "csv", "-o", "{tmp}/nowhere/x.csv"],
        "the directory {tmp}/nowhere does not exist",
    ),
    ("output is a directory", ["--format", "csv", "-o", "{tmp}"], "is a directory"),
]


@pytest.mark.parametrize(
    ("args", "expected"), [c[1:] for c in BAD_EXPORTS], ids=[c[0] for c in BAD_EXPORTS]
)
def test_bad_export_input(
    home: Path,
    db: str,
    records: list[SessionRecord],
    tmp_path: Path,
    args: list[str],
    expected: str,
) -> None:
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = [a.replace("ID0", records[0].id).replace("{tmp}", str(tmp_path)) for a in args]
    result = invoke("export", *args, "--db", db)
    one_error_line(result, expected.replace("{tmp}", str(tmp_path)))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "args",
    [["history"], ["history", "--json"], ["show", "abcd"], ["export", "--format", "csv"]],
    ids=["history", "history --json", "show", "export"],
)
@pytest.mark.parametrize("how", ["--db", "ESTIM_DB"])
def test_a_journal_that_does_not_exist_is_never_created(
    home: Path, tmp_path: Path, args: list[str], how: str
) -> None:
    missing = tmp_path / "typo" / "estmi.db"
    if how == "--db":
        result = invoke(*args, "--db", str(missing))
    else:
        result = invoke(*args, env={"ESTIM_DB": str(missing)})
    one_error_line(result, f"no journal at {missing}: nothing has been recorded there")
    assert not missing.parent.exists()
    assert not home.exists()


def test_without_any_journal_history_is_empty_and_show_is_an_error(home: Path) -> None:
    empty = invoke("history")
    assert (empty.exit_code, empty.stdout, empty.stderr) == (0, "No sessions recorded.\n", "")
    assert json.loads(invoke("history", "--json").stdout) == []
    one_error_line(invoke("show", "abcd"), "nothing has been recorded yet (or pass --db PATH)")
    one_error_line(invoke("export", "--format", "csv"), "nothing has been recorded yet")
    assert not home.exists()  # no database, no directory
