"""``estim history``, ``show`` and ``export``: reading the journal (and, for each
session, where its delivery to the clinic's FHIR server stands: ``estim.outbox``).

These commands never create a journal: a ``--db`` (or ``$ESTIM_DB``) that does not
exist is an error, and with neither, a missing default journal means nothing has
been recorded yet.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from estim.cli.common import JOURNAL, OK, USAGE, echo_json, error_line, fail

if TYPE_CHECKING:
    from estim.journal import Journal
    from estim.outbox import Delivery
    from estim.record import SessionRecord

OUTCOMES = ["completed", "stopped", "aborted", "faulted", "link_lost", "refused", "interrupted"]


def _journal(db: str | None) -> Journal | None:
    """The journal to read; None if no journal was named and the default one does not
    exist yet. Never creates a file: a named journal that does not exist is bad usage."""
    from estim.errors import JournalError
    from estim.journal import Journal, NotAJournal, default_path

    path = Path(db).expanduser() if db is not None else default_path()
    if db is None and not path.exists():
        return None
    try:
        return Journal.open_existing(path)
    except JournalError as err:  # a wrong --db is bad usage; a journal that fails, exit 6
        fail(str(err), JOURNAL if path.is_file() and not isinstance(err, NotAJournal) else USAGE)


def _need_journal(db: str | None) -> Journal:
    journal = _journal(db)
    if journal is None:
        from estim.journal import default_path

        fail(f"no journal at {default_path()}: nothing has been recorded yet (or pass --db PATH)")
    return journal


def parse_when(text: str, option: str) -> str:
    """An ISO date or time (no offset: local time), or an age: 7d, 12h, 30m, 2w."""
    text = text.strip()
    units = {"d": "days", "h": "hours", "m": "minutes", "w": "weeks"}
    if text[:-1].isdigit() and text[-1:] in units:
        when = datetime.now(timezone.utc) - timedelta(**{units[text[-1]]: int(text[:-1])})
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(
            f"{option} {text!r} is not a date (2026-11-22), a local time (2026-11-22T09:00) "
            "or an age (7d, 12h, 30m)"
        )
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # a time without an offset is local, as history shows it
    return parsed.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


db_option = click.option(
    "--db",
    envvar="ESTIM_DB",
    metavar="PATH",
    help="The journal (default: $ESTIM_DB, else estim.db in the app directory). Never created here.",
)
since_option = click.option(
    "--since",
    metavar="WHEN",
    help="Only sessions started at or after WHEN: a date, a local time (2026-11-22T09:00) or an age (7d, 12h).",
)
until_option = click.option(
    "--until",
    metavar="WHEN",
    help="Only sessions started before WHEN (same forms as --since).",
)
patient_option = click.option("--patient", metavar="REF", help="Only this patient reference.")
clinician_option = click.option(
    "--clinician", metavar="NAME", help="Only this clinician (exactly as recorded)."
)


@click.command()
@since_option
@until_option
@patient_option
@clinician_option
@click.option("--unit", "unit_serial", metavar="SERIAL", help="Only this unit's serial number.")
@click.option(
    "--outcome",
    type=click.Choice([*OUTCOMES, "live"]),
    help="Only sessions that ended this way (live: still running).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="Show at most this many sessions, the newest.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON list (times in UTC).")
@db_option
def history(
    since: str | None,
    until: str | None,
    patient: str | None,
    clinician: str | None,
    unit_serial: str | None,
    outcome: str | None,
    limit: int,
    as_json: bool,
    db: str | None,
) -> int:
    """List recorded sessions, newest first, in local time."""
    since_utc = parse_when(since, "--since") if since else None
    until_utc = parse_when(until, "--until") if until else None
    journal = _journal(db)
    records: list[SessionRecord] = []
    deliveries: dict[str, Delivery] = {}
    if journal is not None:
        from estim.outbox import Outbox

        with journal:
            records = journal.query(
                since=since_utc,
                until=until_utc,
                patient=patient,
                clinician=clinician,
                unit=unit_serial,
                outcome=outcome,
                limit=limit,
            )
            deliveries = Outbox(journal).deliveries([r.id for r in records])
    if as_json:
        echo_json([_summary(r, deliveries.get(r.id)) for r in records])
        return OK
    if not records:
        filtered = any((since, until, patient, clinician, unit_serial, outcome))
        click.echo("No sessions recorded" + (" that match" if filtered else "") + ".")
        return OK
    from estim import words

    click.echo(
        f"{'session':<9} {'started (local)':<20} {'outcome':<12} {'delivered':>9} {'planned':>8}  "
        f"{'FHIR':<8} {'clinician':<20} patient / site"
    )
    for r in records:
        delivered = "-" if r.delivered_s is None else f"{r.delivered_s:.1f}s"
        who = " / ".join(x for x in (r.plan.patient_ref, r.plan.site) if x)
        click.echo(
            f"{r.id:<9} {words.local_time(r.created_utc, seconds=False)[:16]:<20} "
            f"{r.outcome or 'live':<12} {delivered:>9} {r.planned_s:>7.0f}s  "
            f"{_delivery_word(deliveries.get(r.id)):<8} "
            f"{(r.plan.clinician or '-')[:20]:<20} {who}"
        )
    return OK


def _delivery_word(d: Delivery | None) -> str:
    """The FHIR column: sent, queued, retry N (N tries failed), REFUSED, or - (not in
    the outbox: live, or recorded before it existed)."""
    if d is None:
        return "-"
    if d.state == "pending":
        return f"retry {d.attempts}" if d.attempts else "queued"
    return "REFUSED" if d.state == "refused" else d.state


def _summary(r: SessionRecord, delivery: Delivery | None = None) -> dict[str, Any]:
    return {
        "id": r.id,
        "created_utc": r.created_utc,
        "started_utc": r.started_utc,
        "ended_utc": r.ended_utc,
        "outcome": r.outcome,
        "stop_reason": r.stop_reason,
        "delivered_s": r.delivered_s,
        "planned_s": r.planned_s,
        "patient_ref": r.plan.patient_ref,
        "clinician": r.plan.clinician,
        "site": r.plan.site,
        "condition": r.plan.condition,
        "unit": f"{r.unit.model} {r.unit.serial_number}",
        "fhir": delivery.as_json() if delivery else None,
    }


def _get(journal: Journal, session_id: str) -> SessionRecord:
    from estim.errors import SessionNotFound

    try:
        return journal.get(session_id)
    except SessionNotFound as err:
        fail(str(err))


@click.command()
@click.argument("session_id")
@click.option("--json", "as_json", is_flag=True, help="The whole record as one JSON object.")
@db_option
def show(session_id: str, as_json: bool, db: str | None) -> int:
    """Show one session in words: plan, unit, outcome and every event."""
    from estim.outbox import Outbox

    with _need_journal(db) as journal:
        record = _get(journal, session_id)
        delivery = Outbox(journal).get(record.id)
    if as_json:
        echo_json(record.model_dump(mode="json"))
        return OK
    click.echo("\n".join(describe(record, delivery)))
    return OK


def describe(r: SessionRecord, delivery: Delivery | None = None) -> list[str]:
    """The record in words, one fact a line."""
    from estim import words
    from estim.durations import format_duration
    from estim.export.facts import fault_names

    plan, unit = r.plan, r.unit
    delivered = "unknown" if r.delivered_s is None else f"{r.delivered_s:.3f} s by the unit's clock"
    lines = [
        f"Session   {r.id}",
        f"Outcome   {words.outcome(r.outcome)}" + (f": {r.stop_reason}" if r.stop_reason else ""),
        f"Dwell     planned {format_duration(r.planned_s)}, delivered {delivered}"
        + (f"; ended by {words.ENDED_BY[r.ended_by]}" if r.ended_by in words.ENDED_BY else ""),
        f"Ramp      {format_duration(plan.ramp)} up and down; watchdog {plan.watchdog:g} s",
        f"Unit      {unit.model} serial {unit.serial_number}, firmware {unit.firmware}, on {unit.port}"
        + (" (simulated)" if unit.simulated else ""),
        f"Requested {words.local_time(r.created_utc)}",
        "Output    " + _output_words(r),
    ]
    for label, value in (
        ("Patient", plan.patient_ref),
        ("Clinician", plan.clinician),
        ("Site", plan.site),
        ("Condition", plan.condition),
        ("Notes", plan.notes),
    ):
        lines.append(f"{label:<9} {words.text(value)}")
    for ch in plan.channels:
        lines.append(f"Channel {ch.channel} {words.channel(ch)}")
    lines.append(f"Faults    {'; '.join(fault_names(r)) or 'none'}")
    lines.append(
        "FHIR      "
        + (delivery.words() if delivery else "not queued (live, or recorded before the outbox)")
    )
    if r.journal_error:
        lines.append(f"Journal   could not be written: {r.journal_error}")
    lines.append("Events (seconds since the start was requested)")
    for e in r.events:
        lines.append(f"  {e.t:9.3f} s  {words.event(e)}")
    return lines


def _output_words(r: SessionRecord) -> str:
    """When output was on, or that it never was, or that nobody knows."""
    from estim import words
    from estim.export.facts import output_period, output_went_on

    period, went = output_period(r), output_went_on(r)
    if period is not None:
        on = words.local_time(period.start_utc) if period.start_utc else "(time not received)"
        off = words.local_time(period.end_utc) if period.end_utc else "at an unknown time"
        return f"on {on}, off {off}"
    if went == "unknown":
        return "not reported on yet" if r.outcome is None else "unknown whether output went on"
    return "never on: nothing was delivered"


def _formats() -> Any:
    from estim.export import FORMATS

    return FORMATS


@click.command()
@click.argument("session_ids", metavar="[SESSION_ID]...", nargs=-1)
@since_option
@until_option
@patient_option
@clinician_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(_formats())),
    default="json",
    show_default=True,
    help="; ".join(f"{name}: {f.help}" for name, f in _formats().items())
    + ". json and html take exactly one session.",
)
@click.option(
    "--output",
    "-o",
    metavar="FILE",
    help="Write here instead of stdout; an existing FILE is refused unless --force.",
)
@click.option("--force", is_flag=True, help="Replace an existing --output FILE.")
@db_option
def export(
    session_ids: tuple[str, ...],
    since: str | None,
    until: str | None,
    patient: str | None,
    clinician: str | None,
    fmt: str,
    output: str | None,
    force: bool,
    db: str | None,
) -> int:
    """Export sessions: the ones named (an id or a unique prefix each), or those the
    filters match, or, with neither, every session."""
    filters = {"--since": since, "--until": until, "--patient": patient, "--clinician": clinician}
    given = [name for name, value in filters.items() if value is not None]
    if session_ids and given:
        fail(f"give session ids or {given[0]}, not both")
    since_utc = parse_when(since, "--since") if since else None
    until_utc = parse_when(until, "--until") if until else None
    target = Path(output).expanduser() if output else None
    if target is not None:
        _check_target(target, force)
    with _need_journal(db) as journal:
        if session_ids:
            records = []
            for sid in session_ids:
                record = _get(journal, sid)
                if record not in records:
                    records.append(record)
        else:
            records = list(
                reversed(
                    journal.query(
                        since=since_utc, until=until_utc, patient=patient, clinician=clinician
                    )
                )
            )  # oldest first, as a chart reads
    chosen = _formats()[fmt]
    if chosen.one_session and len(records) != 1:
        what = "no session matches" if not records else f"{len(records)} sessions match"
        fail(
            f"--format {fmt} holds exactly one session and {what}; name one session, "
            "or use jsonl, csv or fhir for several"
        )
    data = chosen.render(records) if fmt != "fhir" else _fhir(records)
    if not records:
        error_line(f"no session matches; the {fmt} export is empty")
    if target is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        _write(target, data, force)
    return OK


def _fhir(records: list[SessionRecord]) -> bytes:
    """The FHIR bundle with the clinic's identifier systems when its config has [fhir]."""
    from estim.cli.run import load_clinic_config
    from estim.export.as_fhir import bundle

    fhir = load_clinic_config().fhir
    return bundle(records, fhir.systems() if fhir else None)


def _check_target(target: Path, force: bool) -> None:
    if target.is_dir():
        fail(f"-o {target} is a directory; give a file name")
    if target.exists() and not force:
        fail(f"-o {target} exists; add --force to replace it, or choose another name")
    if not target.parent.is_dir():
        fail(f"-o {target}: the directory {target.parent} does not exist")


def _write(target: Path, data: bytes, force: bool) -> None:
    """Write whole or not at all, private (0600, like the journal): a temporary file
    beside the target, then a rename; without --force never over a file, even one
    that appeared meanwhile."""
    import contextlib
    import tempfile

    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(temp, target)
        else:
            os.link(temp, target)  # refuses an existing target, atomically
    except FileExistsError:
        fail(f"-o {target} exists; add --force to replace it, or choose another name")
    except OSError as err:
        fail(f"-o {target}: cannot write: {err.strerror or err}")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
