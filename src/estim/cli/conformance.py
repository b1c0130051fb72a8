"""``estim conformance``: check a unit against PROTOCOL.md, one row per clause."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import click

from estim.cli.common import STOPPED, UNREACHABLE, USAGE, echo_json, fail, port_option

QUESTION = "Is a test load (not a person) connected to every channel?"

EXIT_HELP = """\
Exit codes: 0 every clause passed; 1 the clauses that drive current were
skipped (no test load confirmed); 2 bad usage (no such port); 3 stopped by the
operator (Ctrl-C, SIGTERM: a STOP is sent); 4 the unit failed a clause; 5 the
unit could not be reached (no answer to HELLO, port lost).
"""


@click.command(epilog=EXIT_HELP)
@port_option
@click.option(
    "--test-load",
    is_flag=True,
    help="A test load (a resistor, not a person) is connected to every channel: run the "
    "clauses that drive current without asking.",
)
@click.option(
    "--open-channel",
    type=click.IntRange(2, 8),
    metavar="CHANNEL",
    help="The test load of CHANNEL is disconnected for the whole run: check that START "
    "refuses it LEAD_OFF.",
)
@click.option(
    "--lead-off-at",
    metavar="SECONDS[:CHANNEL]",
    help="A relay opens CHANNEL's test load (default 1) SECONDS after output starts, in every "
    "session, and closes it when output stops; later than the unit's smallest dwell. Checks "
    "lead-off during output.",
)
@click.option(
    "--clause",
    "clauses",
    multiple=True,
    metavar="NAME",
    help="Run only this clause (repeatable; the handshake always runs). Names: --clause list.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document, not the table.")
def conformance(
    port: str | None,
    test_load: bool,
    open_channel: int | None,
    lead_off_at: str | None,
    clauses: tuple[str, ...],
    as_json: bool,
) -> int:
    """Check a unit against the estim protocol (PROTOCOL.md), clause by clause.

    Talks raw frames to the unit: the golden vectors judged by the unit's own
    limits, malformed frames, copies, refusals, framing and response time. The
    clauses that drive current (the watchdog, STOP, ramps, the dwell deadline)
    run only on a test load: with --test-load, or after a yes to the question
    asked on a terminal; otherwise they show SKIP. Never run it on a person.
    """
    from estim.conformance.clause import PASS, Rig, Row
    from estim.conformance.suite import OpenError, check, clause_names, open_port
    from estim.conformance.unseen import not_checked

    if "list" in clauses:
        click.echo("\n".join(clause_names()))
        return 0
    unknown = sorted(set(clauses) - set(clause_names()))
    if unknown:
        fail(f"no clause named {unknown[0]!r}; `--clause list` names them")
    rig = Rig(open_channel=open_channel, lead_off=_lead_off(lead_off_at))
    if not port:
        fail("no unit given: pass --port URL or set ESTIM_PORT")
    try:
        serial_port = open_port(port)
    except OpenError as err:
        fail(str(err), USAGE if err.not_found else UNREACHABLE)

    def confirm() -> bool:
        if test_load:
            return True
        if sys.stdin is None or not sys.stdin.isatty():
            return False
        return click.confirm(QUESTION, default=False, err=True)

    def show(row: Row) -> None:
        if not as_json:
            click.echo(f"{row.result:<4}  {row.section:<8}  {row.rule} -- {row.seen}")

    try:
        with _signals_interrupt():
            report = check(
                serial_port,
                name=port,
                confirm=confirm,
                on_row=show,
                rig=rig,
                only=set(clauses) if clauses else None,
            )
    except KeyboardInterrupt:
        fail("stopped by the operator; a STOP was sent to the unit", STOPPED)
    finally:
        serial_port.close()
    if as_json:
        echo_json(report.as_json())
        return report.exit_code
    counts = report.counts
    who = report.info.serial_number if report.info is not None else port
    click.echo(
        f"conformance of {who}: {counts[PASS]} clauses passed, {counts['FAIL']} failed, "
        f"{counts['SKIP']} skipped"
    )
    if report.unreachable is not None:
        click.echo(f"the unit could not be reached: {report.unreachable}", err=True)
    elif counts["FAIL"] == 0 and not report.test_load:
        click.echo(
            "the clauses that drive current were skipped: run again with --test-load once a "
            "test load (not a person) is on every channel",
            err=True,
        )
    if report.info is not None:
        click.echo("not visible on the wire (check them on a measured test load):")
        for what, how in not_checked(report.rig):
            click.echo(f"  - {what}: {how}")
    sys.stdout.flush()
    return report.exit_code


def _lead_off(text: str | None) -> tuple[float, int] | None:
    """``SECONDS[:CHANNEL]``, channel 1 by default; a bad one is a usage error."""
    if text is None:
        return None
    seconds, _, channel = text.partition(":")
    try:
        at, number = float(seconds), int(channel or "1")
    except ValueError:
        fail(f"--lead-off-at {text!r}: expected SECONDS[:CHANNEL], for example 65:1")
    if not (at > 0 and 1 <= number <= 8):
        fail(f"--lead-off-at {text!r}: SECONDS must be above 0 and CHANNEL 1..8")
    return at, number


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run as Ctrl-C does: the suite's last act is a STOP."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
