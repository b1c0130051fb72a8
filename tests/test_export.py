"""Exports: the table of formats and its json, jsonl, csv and events-csv formats,
on records real (simulated) sessions left in a journal."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from estim.export import FORMATS, export
from estim.export.facts import output_period
from estim.record import SessionRecord

from .records_helpers import eight_channels, live_and_interrupted, varied_journal


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[SessionRecord]:
    base = tmp_path_factory.mktemp("export")
    made = varied_journal(base / "estim.db")
    made.append(eight_channels(base / "eight.db"))
    made.extend(live_and_interrupted(base / "crashed.db"))
    return made


@pytest.fixture
def in_new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "EST5EDT,M3.2.0,M11.1.0")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def test_the_table_names_every_format() -> None:
    assert list(FORMATS) == ["json", "jsonl", "csv", "events-csv", "fhir", "html"]
    assert {n for n, f in FORMATS.items() if f.one_session} == {"json", "html"}
    assert all(f.help for f in FORMATS.values())


@pytest.mark.parametrize("name", ["json", "html"])
@pytest.mark.parametrize("count", [0, 2])
def test_one_session_formats_refuse_other_counts(
    records: list[SessionRecord], name: str, count: int
) -> None:
    with pytest.raises(ValueError, match=f"format {name} holds exactly one session, not {count}"):
        export(name, records[:count])


def test_an_unknown_format_is_refused(records: list[SessionRecord]) -> None:
    with pytest.raises(ValueError, match="unknown export format 'xml'; known: json, jsonl"):
        export("xml", records)


def test_json_is_the_whole_record(records: list[SessionRecord]) -> None:
    for record in records:
        data = export("json", [record])
        assert SessionRecord.model_validate_json(data) == record
        assert json.loads(data)["schema_version"] == 1


def test_jsonl_is_one_record_per_line(records: list[SessionRecord]) -> None:
    lines = export("jsonl", records).decode().splitlines()
    assert [SessionRecord.model_validate_json(line) for line in lines] == records
    assert export("jsonl", []) == b""


def test_csv_is_one_flat_row_per_session(records: list[SessionRecord], in_new_york: None) -> None:
    table = rows(export("csv", records))
    assert [r["session"] for r in table] == [r.id for r in records]
    for row in table:
        for value in row.values():
            assert not value.startswith(("{", "[")), value  # no JSON in a cell
            assert value not in ("None", "null")
    first = table[0]
    assert first["patient_ref"] == "P-0042"
    assert first["clinician"] == "Dr Ada Lovelace"
    assert first["site"] == "left vastus lateralis"
    assert first["condition"] == "knee osteoarthritis"
    assert (first["outcome"], first["ended_by"]) == ("completed", "unit")
    assert first["stop_reason"] == "the unit's own deadline ended it"
    assert (first["planned_s"], first["delivered_s"], first["ramp_s"]) == ("60", "60", "5")
    assert first["unit_serial"] == "SIM-0001"
    assert first["unit_simulated"] == "yes"
    assert first["local_zone"] in ("EST-0500", "EDT-0400")
    # local and UTC are the same instant
    period = output_period(records[0])
    assert period is not None
    assert first["output_on_utc"] == period.start_utc
    assert first["output_off_utc"] == period.end_utc
    from datetime import datetime

    utc = datetime.fromisoformat(first["output_on_utc"].replace("Z", "+00:00"))
    assert first["output_on_local"] == utc.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert first["output_on_local"] != utc.strftime("%Y-%m-%d %H:%M:%S")
    # channels: dense-disperse on channel 2, the operator's change on channel 1
    assert (first["ch1_frequency_hz"], first["ch1_pulse_width_us"], first["ch1_waveform"]) == (
        "2",
        "250",
        "biphasic_symmetric",
    )
    assert (first["ch1_planned_ma"], first["ch1_peak_reached_ma"]) == ("12", "14")
    assert (first["ch2_mode"], first["ch2_alt_frequency_hz"], first["ch2_switch_s"]) == (
        "dense_disperse",
        "100",
        "3",
    )
    assert first["ch3_frequency_hz"] == ""
    stopped, faulted, burst, refused = table[1:5]
    assert (stopped["outcome"], stopped["delivered_s"], stopped["stop_reason"]) == (
        "stopped",
        "10",
        "operator",
    )
    assert faulted["faults"] == "LEAD_OFF (channel 1)"
    assert (burst["ch3_mode"], burst["ch3_waveform"], burst["notes"]) == (
        "burst",
        "biphasic_asymmetric",
        "tolerated well",
    )
    assert (refused["outcome"], refused["output_on_utc"], refused["clinician"]) == (
        "refused",
        "",
        "",
    )
    assert refused["ch1_peak_reached_ma"] == ""


def test_csv_local_zone_is_the_one_its_local_times_were_given_in(
    records: list[SessionRecord], in_new_york: None
) -> None:
    """``local_zone`` was the exporting machine's zone *now*: a July session exported in
    December said EST-0500 beside times given in EDT, an hour off for a reader."""
    july = records[0].model_copy(update={"created_utc": "2026-07-01T14:00:00.000Z"})
    december = records[0].model_copy(update={"created_utc": "2026-12-01T15:00:00.000Z"})
    summer, winter = rows(export("csv", [july, december]))
    assert (summer["local_zone"], summer["requested_local"]) == ("EDT-0400", "2026-07-01 10:00:00")
    assert (winter["local_zone"], winter["requested_local"]) == ("EST-0500", "2026-12-01 10:00:00")


def test_when_output_went_off_is_unknown_if_the_unit_never_said(
    records: list[SessionRecord],
) -> None:
    """A cut link: the unit's watchdog ended output at 20.4 s, the host gave up at 23.4
    s; with no word from the unit, "output off" (CSV, HTML, FHIR performedPeriod.end)
    was the host's giving up, a guess shown as a fact."""
    stopped = records[1]
    cut = stopped.model_copy(
        update={
            "outcome": "link_lost",
            "delivered_s": None,
            "events": [e for e in stopped.events if e.kind != "unit_stopped"],
        }
    )
    period = output_period(cut)
    assert period is not None
    assert period.start_utc is not None
    assert (period.end_utc, period.end_t) == (None, None)
    [row] = rows(export("csv", [cut]))
    assert (row["output_off_utc"], row["output_off_local"]) == ("", "")


def test_csv_channel_columns_run_to_the_highest_channel_used(records: list[SessionRecord]) -> None:
    one = rows(export("csv", records[1:2]))[0]
    assert "ch1_frequency_hz" in one
    assert "ch2_frequency_hz" not in one
    eight = rows(export("csv", records))[5]
    assert [eight[f"ch{n}_planned_ma"] for n in range(1, 9)] == [str(n) for n in range(1, 9)]
    assert "ch9_planned_ma" not in eight
    assert rows(export("csv", [])) == []
    assert export("csv", []).decode().startswith("session,schema_version,")


def test_csv_of_live_and_interrupted_sessions(records: list[SessionRecord]) -> None:
    live, interrupted, never_on = rows(export("csv", records[6:]))
    assert (live["outcome"], live["delivered_s"], live["output_off_utc"]) == ("live", "", "")
    assert live["output_on_utc"] != ""
    assert interrupted["outcome"] == "interrupted"
    assert "the host stopped unexpectedly" in interrupted["stop_reason"]
    assert never_on["output_on_utc"] == ""


def test_events_csv_is_one_flat_row_per_event(records: list[SessionRecord]) -> None:
    table = rows(export("events-csv", records))
    assert len(table) == sum(len(r.events) for r in records)
    assert [(t["session"], t["n"]) for t in table] == [
        (r.id, str(e.n)) for r in records for e in r.events
    ]
    for row in table:
        for value in row.values():
            assert not value.startswith(("{", "[")), value
    by_kind = {row["kind"]: row for row in table if row["session"] == records[0].id}
    assert (by_kind["amplitude_set"]["channel"], by_kind["amplitude_set"]["ma"]) == ("1", "14")
    assert by_kind["unit_completed"]["delivered_ms"] == "60000"
    assert by_kind["ended"]["outcome"] == "completed"
    assert by_kind["ended"]["ended_by"] == "unit"
    assert by_kind["start_requested"]["port"].startswith("sim://")
    assert by_kind["start_requested"]["other"] == ""  # the plan and unit are the session's
    fault = next(row for row in table if row["kind"] == "fault")
    assert (fault["name"], fault["channel"]) == ("LEAD_OFF", "1")


def test_exports_are_pure(records: list[SessionRecord]) -> None:
    for name, fmt in FORMATS.items():
        chosen = records[:1] if fmt.one_session else records
        assert fmt.render(chosen) == fmt.render(chosen), name


def test_the_export_needs_no_fhir_library_at_run_time() -> None:
    code = (
        "import sys, estim.export\n"
        "print(sorted(m for m in sys.modules if m.startswith(('fhir', 'jinja', 'lxml'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
