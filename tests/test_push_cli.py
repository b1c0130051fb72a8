"""``estim push`` and the ``[fhir]`` config section, without a server: every bad input is
one line on stderr and the exit code README's table gives; a server that is not there
leaves the sessions queued (exit 5) and ``estim history`` says so."""

from __future__ import annotations

import socket
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from estim.cli import cli
from estim.config import ConfigError, load_config
from estim.journal import Journal
from estim.record import SessionRecord

from .outbox_helpers import copy_session
from .records_helpers import varied_journal


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> list[SessionRecord]:
    return varied_journal(tmp_path_factory.mktemp("templates") / "estim.db")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ESTIM_HOME", str(home))
    for name in ("ESTIM_DB", "ESTIM_PORT", "ESTIM_CONFIG", "ESTIM_FHIR_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return home


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("estim: ")
    return lines[0]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[fhir]\ntoken = 'x'\n", "config.toml:1: fhir: base_url is missing"),
        (
            "[fhir]\nbase_url = 'ftp://x'\n",
            "config.toml:2: fhir.base_url: 'ftp://x' is not an http(s) URL",
        ),
        (
            "[fhir]\nbase_url = 'http://fhir.clinic.example/R4'\n",
            "would send patient records unencrypted; use https://",
        ),
        ("[fhir]\nbase_url = 'https://x/R4?a=1'\n", "without a query or fragment"),
        ("[fhir]\nbase_url = 'https://x'\ncolour = 1\n", "config.toml:3: fhir.colour: unknown key"),
        (
            "[fhir]\nbase_url = 'https://x'\ntimeout = 0\n",
            "fhir.timeout: 0 must be seconds from 1 to 600",
        ),
        ("[fhir]\nbase_url = 'https://x'\ntoken = 12\n", "fhir.token: 12 must be text in quotes"),
        (
            "[fhir]\nbase_url = 'https://x'\ntoken_env = 'A-B'\n",
            "'A-B' is not an environment variable name",
        ),
        (
            "[fhir]\nbase_url = 'https://x'\npatient_system = 'https://c/mrn|x'\n",
            "config.toml:3: fhir.patient_system: 'https://c/mrn|x' is not an identifier system",
        ),
        (
            "[fhir]\nbase_url = 'https://x'\ndevice_system = 'assets'\n",
            "fhir.device_system: 'assets'",
        ),
    ],
)
def test_a_bad_fhir_section_is_one_line_naming_file_line_and_key(
    home: Path, text: str, words: str
) -> None:
    (home / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=None) as caught:
        load_config()
    assert words in str(caught.value)
    result = run("push", "--pending")
    assert result.exit_code == 2
    assert words in one_line(result)


def test_the_fhir_section_as_read(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "config.toml").write_text(
        "[fhir]\nbase_url = 'https://fhir.clinic.example/R4/'\ntoken_env = 'CLINIC_TOKEN'\n"
        "timeout = 12\npatient_system = 'https://clinic.example/sid/mrn'\n"
        "practitioner_system = 'urn:oid:1.2.3'\n"
    )
    fhir = load_config().fhir
    assert fhir is not None
    assert (fhir.base_url, fhir.timeout_s) == ("https://fhir.clinic.example/R4", 12.0)
    assert fhir.bearer() is None
    monkeypatch.setenv("CLINIC_TOKEN", "s3cret")
    assert fhir.bearer() == "s3cret"  # read at each request: a rotated token is used next
    assert "s3cret" not in repr(fhir)
    systems = fhir.systems()
    assert (systems.patient, systems.practitioner) == (
        "https://clinic.example/sid/mrn",
        "urn:oid:1.2.3",
    )
    assert systems.device == "https://estim.dev/fhir/sid/unit"  # estim's, as none was set


def test_push_without_a_fhir_server_configured(home: Path, tmp_path: Path) -> None:
    Journal(tmp_path / "estim.db").close()
    result = run("push", "--pending", "--db", str(tmp_path / "estim.db"))
    assert result.exit_code == 2
    assert "no FHIR server configured: add a [fhir] section with base_url" in one_line(result)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "name the sessions to send, or give --pending, --since WHEN or --watch"),
        (["--pending", "--watch"], "give one of --pending, --watch, not several"),
        (["abc", "--pending"], "give one of SESSION_ID, --pending, not several"),
        (["--since", "yesterday"], "--since 'yesterday' is not a date"),
        (["ffffffff"], "session 'ffffffff': no such session; see estim history"),
    ],
)
def test_bad_push_usage(home: Path, tmp_path: Path, args: list[str], words: str) -> None:
    (home / "config.toml").write_text(f"[fhir]\nbase_url = 'http://127.0.0.1:{closed_port()}'\n")
    Journal(tmp_path / "estim.db").close()
    result = run("push", *args, "--db", str(tmp_path / "estim.db"))
    assert result.exit_code == 2
    assert words in one_line(result)


def test_a_live_session_is_not_pushed(
    home: Path, tmp_path: Path, templates: list[SessionRecord]
) -> None:
    (home / "config.toml").write_text(f"[fhir]\nbase_url = 'http://127.0.0.1:{closed_port()}'\n")
    db = tmp_path / "estim.db"
    with Journal(db) as journal:  # this journal holds the session's lock: it is live
        sid = copy_session(
            journal,
            templates[0],
            0x77,
            serial="S",
            created=datetime.now(timezone.utc),
            finish=False,
        )
        result = run("push", sid, "--db", str(db))
    assert result.exit_code == 2
    assert f"session {sid} is still live; it is queued when it ends" in one_line(result)


def test_a_server_that_is_not_there_leaves_them_queued(
    home: Path, tmp_path: Path, templates: list[SessionRecord]
) -> None:
    port = closed_port()
    (home / "config.toml").write_text(f"[fhir]\nbase_url = 'http://127.0.0.1:{port}/fhir'\n")
    db = tmp_path / "estim.db"
    with Journal(db) as journal:
        ids = [
            copy_session(
                journal, templates[i], 0x10 + i, serial="S", created=datetime.now(timezone.utc)
            )
            for i in range(2)
        ]
    result = run("push", "--pending", "--db", str(db))
    assert result.exit_code == 5
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ids
    for line in lines:
        assert f"not sent  cannot reach http://127.0.0.1:{port}/fhir: connection refused" in line
        assert "queued, next try" in line
    history = run("history", "--db", str(db))
    assert history.stdout.count(" retry 1 ") == 2
    shown = run("show", ids[0], "--db", str(db))
    assert "FHIR      queued, 1 attempt(s), next at " in shown.stdout
