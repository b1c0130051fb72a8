"""``estim history``, ``show`` and ``export``: reading the journal."""

from __future__ import annotations

import csv
import io
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import click

from estim.cli.common import JOURNAL, OK, echo_json, fail


def _journal(db: str | None) -> Any:
    from estim.errors import JournalError
    from estim.journal import Journal

    try:
        return Journal(db) if db else Journal()
    except JournalError as err:
        fail(str(err), JOURNAL)


def parse_since(text: str) -> str:
    """An ISO date or time (UTC), or an age: 7d, 12h, 30m."""
    text = text.strip()
    units = {"d": "days", "h": "hours", "m": "minutes", "w": "weeks"}
    if text[:-1].isdigit() and text[-1:] in units:
        when = datetime.now(timezone.utc) - timedelta(**{units[text[-1]]: int(text[:-1])})
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(
            f"--since {text!r} is not a date (2026-11-22), a time (2026-11-22T09:00) or an age (7d, 12h, 30m)"
        )
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


db_option = click.option(
    "--db",
    envvar="ESTIM_DB",
    metavar="PATH",
    help="The journal (default: $ESTIM_DB, else estim.db in the app directory).",
)


@click.command()
@click.option(
    "--since", metavar="WHEN", help="Only sessions since a date, a time or an age (7d, 12h)."
)
@click.option("--patient", metavar="REF", help="Only this patient reference.")
@click.option("--unit", "unit_serial", metavar="SERIAL", help="Only this unit's serial number.")
@click.option(
    "--outcome",
    type=click.Choice(
        [
            "completed",
            "stopped",
            "aborted",
            "faulted",
            "link_lost",
            "refused",
            "interrupted",
            "live",
        ]
    ),
    help="Only sessions that ended this way.",
)
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
@db_option
def history(
    since: str | None,
    patient: str | None,
    unit_serial: str | None,
    outcome: str | None,
    limit: int,
    as_json: bool,
    db: str | None,
) -> int:
    """List recorded sessions, newest first."""
    since_utc = parse_since(since) if since else None
    with _journal(db) as journal:
        rows = journal.session_rows(
            since=since_utc,
            patient_ref=patient,
            unit_serial=unit_serial,
            outcome=outcome,
            limit=limit,
        )
    if as_json:
        echo_json([_summary(r) for r in rows])
        return OK
    if not rows:
        click.echo(
            "No sessions recorded"
            + (" that match" if any((since, patient, unit_serial, outcome)) else "")
            + "."
        )
        return OK
    click.echo(
        f"{'session':<9} {'started (UTC)':<20} {'outcome':<12} {'delivered':>9} {'planned':>8}  patient / site"
    )
    for r in rows:
        s = _summary(r)
        delivered = "-" if s["delivered_s"] is None else f"{s['delivered_s']:.1f}s"
        who = " / ".join(x for x in (s["patient_ref"], s["site"]) if x)
        click.echo(
            f"{s['id']:<9} {s['created_utc'][:19].replace('T', ' '):<20} {s['outcome'] or 'live':<12} "
            f"{delivered:>9} {s['planned_s']:>7.0f}s  {who}"
        )
    return OK


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    import json

    plan = json.loads(row["plan"])
    return {
        "id": row["id"],
        "created_utc": row["created_utc"],
        "outcome": row["outcome"],
        "stop_reason": row["stop_reason"],
        "delivered_s": None if row["delivered_ms"] is None else row["delivered_ms"] / 1000,
        "planned_s": row["planned_ms"] / 1000,
        "patient_ref": row["patient_ref"],
        "site": plan.get("site"),
        "unit": f"{row['unit_model']} {row['unit_serial']}",
    }


def _record(journal: Any, session_id: str) -> Any:
    from estim.record import SessionRecord

    key = session_id.strip().lower()
    row = journal.session_row(key)
    if row is None:
        matches = (
            [r for r in journal.session_rows(limit=100_000) if r["id"].startswith(key)]
            if key
            else []
        )
        if len(matches) != 1:
            known = "several sessions start with it" if matches else "no such session"
            fail(f"session {session_id!r}: {known}; see estim history")
        row = matches[0]
    return SessionRecord.from_journal(row, journal.event_rows(row["id"]))


@click.command()
@click.argument("session_id")
@click.option("--json", "as_json", is_flag=True, help="The whole record as one JSON object.")
@db_option
def show(session_id: str, as_json: bool, db: str | None) -> int:
    """Show one session: plan, unit, outcome and every event."""
    with _journal(db) as journal:
        record = _record(journal, session_id)
    if as_json:
        echo_json(record.model_dump(mode="json"))
        return OK
    from estim.plan import format_duration

    delivered = "unknown" if record.delivered_s is None else f"{record.delivered_s:.3f} s"
    lines = [
        f"Session   {record.id}",
        f"Outcome   {record.outcome or 'live'}: {record.stop_reason or ''}",
        f"Dwell     planned {format_duration(record.planned_s)}, delivered {delivered}"
        + (f" (ended by the {record.ended_by})" if record.ended_by else ""),
        f"Unit      {record.unit.model} {record.unit.serial_number} fw {record.unit.firmware} on {record.unit.port}"
        + (" (simulated)" if record.unit.simulated else ""),
        f"Times     created {record.created_utc}, started {record.started_utc or '-'}, ended {record.ended_utc or '-'}",
    ]
    plan = record.plan
    for label, value in (
        ("Patient", plan.patient_ref),
        ("Site", plan.site),
        ("Condition", plan.condition),
        ("Clinician", plan.clinician),
        ("Notes", plan.notes),
    ):
        if value:
            lines.append(f"{label:<9} {value}")
    for ch in plan.channels:
        lines.append(
            f"Channel {ch.channel} {ch.amplitude_ma:g} mA {ch.frequency_hz:g} Hz {ch.pulse_width_us} us {ch.waveform} {ch.mode}"
        )
    for fault in record.faults:
        lines.append(f"FAULT     {fault.name} channel {fault.channel} at {fault.t:.3f} s")
    lines.append("Events")
    for e in record.events:
        data = " ".join(f"{k}={v}" for k, v in e.data.items() if k not in ("plan", "unit"))
        lines.append(f"  {e.t:9.3f}s  {e.kind:<18} {data}")
    click.echo("\n".join(lines))
    return OK


@click.command()
@click.argument("session_id")
@click.option(
    "--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    help="Write here instead of stdout.",
)
@db_option
def export(session_id: str, fmt: str, output: str | None, db: str | None) -> int:
    """Export one session: the record as JSON, or its events as CSV."""
    import json

    with _journal(db) as journal:
        record = _record(journal, session_id)
    if fmt == "json":
        text = json.dumps(record.model_dump(mode="json"), indent=2) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["session", "n", "utc", "t_s", "unit_ms", "kind", "data"])
        for e in record.events:
            writer.writerow(
                [
                    record.id,
                    e.n,
                    e.utc,
                    f"{e.t:.6f}",
                    "" if e.unit_ms is None else e.unit_ms,
                    e.kind,
                    json.dumps(e.data),
                ]
            )
        text = buffer.getvalue()
    if output:
        with open(output, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return OK
