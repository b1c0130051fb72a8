"""``estim push``: deliver finished sessions to the clinic's FHIR server (``[fhir]`` in
the config file) by hand, or keep delivering them (``--watch``).

Sending is safe to repeat: each entry of a session's bundle is a conditional create,
so a session sent again is found, not copied. What each try did is in the journal's
outbox, and ``estim history`` shows it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import click

from estim.cli.common import JOURNAL, OK, UNIT_FAULT, UNREACHABLE, USAGE, echo_json, fail
from estim.cli.records import _need_journal, db_option, parse_when, since_option

if TYPE_CHECKING:
    from estim.config import FhirSettings
    from estim.sender import Attempt, Sender

#: how often --watch looks for sessions another process queued
WATCH_IDLE_S = 30.0


def _settings() -> FhirSettings:
    from estim.cli.run import load_clinic_config

    config = load_clinic_config()
    if config.fhir is None:
        where = config.path or "config.toml in estim's directory (or $ESTIM_CONFIG)"
        fail(
            f"no FHIR server configured: add a [fhir] section with base_url to {where} "
            "(see README: The clinic's config file)"
        )
    return config.fhir


def _line(attempt: Attempt) -> str:
    from estim import words

    if attempt.verdict == "sent":
        where = attempt.location or "the server"
        return f"{attempt.session_id}  sent      {where} ({attempt.detail})"
    if attempt.verdict == "refused":
        return f"{attempt.session_id}  REFUSED   {attempt.detail}; kept, see estim show"
    if attempt.verdict == "busy":
        return f"{attempt.session_id}  skipped   {attempt.detail}"
    when = words.local_time(attempt.next_attempt_utc)
    return f"{attempt.session_id}  not sent  {attempt.detail}; queued, next try {when}"


def _exit_code(attempts: list[Attempt]) -> int:
    verdicts = {a.verdict for a in attempts}
    if "refused" in verdicts:
        return UNIT_FAULT
    if verdicts & {"retry", "busy"}:
        return UNREACHABLE
    return OK


@click.command()
@click.argument("session_ids", metavar="[SESSION_ID]...", nargs=-1)
@click.option("--pending", is_flag=True, help="Every session not yet delivered, now.")
@since_option
@click.option(
    "--watch",
    is_flag=True,
    help="Keep delivering: each queued session when its next try is due, until Ctrl-C.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per session tried.")
@db_option
def push(
    session_ids: tuple[str, ...],
    pending: bool,
    since: str | None,
    watch: bool,
    as_json: bool,
    db: str | None,
) -> int:
    """Send finished sessions to the clinic's FHIR server: the ones named (an id or a
    unique prefix each), every one not yet delivered (--pending), every one started
    since WHEN (--since: sent again if it was), or keep sending (--watch).

    Exit codes: 0 every session tried was delivered; 2 bad usage or no [fhir] server
    configured; 4 the server refused a session (kept with its reason: estim show);
    5 the server could not be reached or failed (the sessions stay queued and are tried
    again); 6 the journal could not be written."""
    chosen = [
        name
        for name, on in (
            ("SESSION_ID", session_ids),
            ("--pending", pending),
            ("--since", since),
            ("--watch", watch),
        )
        if on
    ]
    if len(chosen) != 1:
        fail(
            "name the sessions to send, or give --pending, --since WHEN or --watch"
            if not chosen
            else f"give one of {', '.join(chosen)}, not several"
        )
    since_utc = parse_when(since, "--since") if since else None
    settings = _settings()
    from estim.errors import JournalError, SessionNotFound
    from estim.sender import Sender

    with _need_journal(db) as journal:
        sender = Sender(journal, settings)
        try:
            if watch:
                return _watch(sender, as_json)
            if pending:
                attempts = sender.send_pending()
            elif since_utc is not None:
                ids = [r.id for r in reversed(journal.query(since=since_utc)) if r.outcome]
                attempts = sender.send(ids)
            else:
                attempts = sender.send(list(session_ids))
        except SessionNotFound as err:
            fail(str(err))
        except JournalError as err:
            fail(str(err), USAGE if "still live" in str(err) else JOURNAL)
    _show(attempts, as_json)
    if not attempts and not as_json:
        click.echo("Nothing to send.")
    return _exit_code(attempts)


def _show(attempts: list[Attempt], as_json: bool) -> None:
    for attempt in attempts:
        if as_json:
            echo_json(attempt.__dict__)
        else:
            click.echo(_line(attempt))


class _Stop:
    def __init__(self) -> None:
        self.event = threading.Event()

    def request_stop(self, *args: object) -> None:
        self.event.set()


def _watch(sender: Sender, as_json: bool) -> int:
    """Send what is due, sleep until the next try or WATCH_IDLE_S, until a signal."""
    from estim.signals import stop_on_signals

    stop = _Stop()
    with stop_on_signals(stop):
        while not stop.event.is_set():
            _show(sender.send_due(), as_json)
            due = sender.seconds_until_due()
            stop.event.wait(WATCH_IDLE_S if due is None else min(max(due, 0.05), WATCH_IDLE_S))
    return OK
