"""The journal's public read API: ``Journal.get``, ``Journal.query`` and
``Journal.open_existing``, on journals that real (simulated) sessions wrote."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from estim.errors import JournalError, SessionNotFound
from estim.journal import Journal
from estim.record import SessionRecord

from .records_helpers import make_plan, run, stop_at, varied_journal


@pytest.fixture(scope="module")
def journal_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SessionRecord]]:
    path = tmp_path_factory.mktemp("records") / "estim.db"
    return path, varied_journal(path)


@pytest.fixture
def journal(journal_file: tuple[Path, list[SessionRecord]]) -> Iterator[Journal]:
    with Journal.open_existing(journal_file[0]) as j:
        yield j


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's local time is UTC-07:00 (no daylight saving), so local and UTC differ."""
    monkeypatch.setenv("TZ", "MST7")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def made(journal_file: tuple[Path, list[SessionRecord]]) -> list[SessionRecord]:
    return journal_file[1]


def test_get_by_full_id_returns_the_whole_record(
    journal: Journal, made: list[SessionRecord]
) -> None:
    record = journal.get(made[0].id)
    assert record == made[0]
    assert record.outcome == "completed"
    assert record.delivered_s == 60.0
    assert [e.n for e in record.events] == list(range(len(record.events)))
    assert record.events[0].kind == "start_requested"
    assert record.events[-1].kind == "ended"


def test_get_by_unique_prefix_and_case_and_spaces(
    journal: Journal, made: list[SessionRecord]
) -> None:
    ids = [r.id for r in made]
    for sid in ids:
        prefix = next(sid[:n] for n in range(1, 9) if sum(i.startswith(sid[:n]) for i in ids) == 1)
        assert journal.get(prefix).id == sid
        assert journal.get(f" {prefix.upper()} ").id == sid


@pytest.mark.parametrize("key", ["", "   ", "zz", "0123456789", "%", "_", "1' OR '1'='1"])
def test_get_refuses_what_matches_no_session(journal: Journal, key: str) -> None:
    with pytest.raises(SessionNotFound, match="no such session") as caught:
        journal.get(key)
    assert repr(key.strip()) in str(caught.value)
    assert isinstance(caught.value, JournalError)
    assert isinstance(caught.value, LookupError)


def test_get_refuses_an_ambiguous_prefix_and_names_the_candidates(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path) as j:
        for sid in (0xAB000001, 0xAB000002):
            j.begin(
                sid,
                plan=make_plan().model_dump(mode="json"),
                unit={"model": "m", "serial_number": "s", "firmware": "f", "simulated": True},
                port="sim://",
                planned_ms=60_000,
            )
            j.finish(
                f"{sid:08x}",
                outcome="stopped",
                stop_reason="operator",
                ended_by=None,
                delivered_ms=0,
                started_utc=None,
                ended_utc="2026-11-22T09:00:00.000Z",
            )
        with pytest.raises(SessionNotFound, match="'ab': 2 sessions start with it") as caught:
            j.get("ab")
        assert "ab000001" in str(caught.value)
        assert "ab000002" in str(caught.value)
        assert j.get("ab000002").id == "ab000002"


def test_query_is_newest_first_and_returns_records(
    journal: Journal, made: list[SessionRecord]
) -> None:
    found = journal.query()
    assert [r.id for r in found] == [r.id for r in reversed(made)]
    assert all(isinstance(r, SessionRecord) for r in found)
    assert journal.query(limit=2) == list(reversed(made))[:2]


def test_query_filters(journal: Journal, made: list[SessionRecord]) -> None:
    def ids(**filters: object) -> list[str]:
        return [r.id for r in journal.query(**filters)]  # type: ignore[arg-type]

    assert ids(patient="P-0007") == [made[3].id]
    assert ids(patient="P-404") == []
    assert ids(clinician="Dr Grace Hopper") == [made[1].id]
    assert set(ids(clinician="Dr Ada Lovelace")) == {made[0].id, made[2].id, made[3].id}
    assert ids(clinician="dr ada lovelace") == []  # exact, like patient references
    assert ids(unit="SIM-0002") == [made[3].id]
    assert ids(outcome="stopped") == [made[1].id]
    assert ids(outcome="faulted") == [made[2].id]
    assert ids(outcome="refused") == [made[4].id]
    assert ids(outcome="live") == []
    assert ids(patient="P-0042", outcome="completed") == [made[0].id]


def test_query_by_time_with_datetimes_and_iso_strings(
    journal: Journal, made: list[SessionRecord], far_from_utc: None
) -> None:
    third = made[2].created_utc
    as_datetime = datetime.fromisoformat(third.replace("Z", "+00:00"))
    newer = [r.id for r in reversed(made[2:])]
    older = [r.id for r in reversed(made[:2])]
    assert [r.id for r in journal.query(since=third)] == newer
    assert [r.id for r in journal.query(since=as_datetime)] == newer
    assert [r.id for r in journal.query(until=third)] == older  # until is exclusive
    assert [r.id for r in journal.query(until=as_datetime)] == older
    local = as_datetime.astimezone().replace(tzinfo=None)  # naive means local time
    assert local.hour != as_datetime.hour
    assert [r.id for r in journal.query(since=local)] == newer
    assert [r.id for r in journal.query(since=local.isoformat())] == newer
    offset = as_datetime.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    assert [r.id for r in journal.query(since=offset)] == newer
    assert journal.query(since=third, until=third) == []
    day = local.date().isoformat()  # a bare date is local midnight, like a naive time
    assert len(journal.query(since=day)) >= 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("since", "yesterday"), ("until", "2026-13-01"), ("since", ""), ("until", 12)],
)
def test_query_refuses_a_time_it_cannot_read(journal: Journal, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field} {value!r} is not"):
        journal.query(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, -1])
def test_query_refuses_a_limit_below_one(journal: Journal, limit: int) -> None:
    with pytest.raises(ValueError, match=f"limit {limit} "):
        journal.query(limit=limit)


def test_open_existing_never_creates_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "estim.db"
    with pytest.raises(JournalError, match=r"no journal at .*nowhere/estim\.db") as caught:
        Journal.open_existing(missing)
    assert "\n" not in str(caught.value)
    assert not missing.parent.exists()
    also_missing = tmp_path / "estim.db"
    with pytest.raises(JournalError):
        Journal.open_existing(str(also_missing))
    assert os.listdir(tmp_path) == []


def test_open_existing_reads_what_a_session_wrote(tmp_path: Path) -> None:
    path = tmp_path / "estim.db"
    record = run(path, make_plan(), stop_at(10))
    with Journal.open_existing(path) as journal:
        assert journal.get(record.id) == record


def test_records_carry_schema_version_1(journal: Journal) -> None:
    assert {r.schema_version for r in journal.query()} == {1}
