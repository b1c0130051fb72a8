"""What every estim command shares: exit codes, one-line errors, the port option."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

# Exit codes, documented in ``estim --help`` and README.md.
OK = 0
DECLINED = 1  # the operator answered no at the confirmation: nothing was started
USAGE = 2  # bad usage or a plan refused (before or by the unit)
STOPPED = 3  # stopped early by the operator (a key, Ctrl-C, a signal, estim stop)
UNIT_FAULT = 4  # lead-off, over-current, watchdog, the unit's e-stop
UNREACHABLE = 5  # the unit could not be reached or the link was lost
JOURNAL = 6  # the journal could not be written
INTERNAL = 7  # a fault in estim itself (a bug): output was stopped

EXIT_CODES_HELP = """\
Exit codes: 0 the dwell completed; 1 declined at the confirmation (nothing
started); 2 bad usage or a plan refused; 3 stopped early by the operator; 4 a
unit fault (lead-off, over-current, watchdog, the unit's e-stop); 5 the unit
could not be reached or the link was lost; 6 the journal could not be written;
7 a fault in estim itself (a bug; output was stopped: please report it).
"""


class Failure(click.ClickException):
    """A one-line error with a chosen exit code."""

    def __init__(self, message: str, exit_code: int = USAGE) -> None:
        super().__init__(" ".join(message.split()))
        self.code = exit_code


def fail(message: str, code: int = USAGE) -> NoReturn:
    raise Failure(message, code)


def error_line(message: str) -> None:
    """One line on stderr; never raises (the terminal may be gone)."""
    try:
        click.echo(f"estim: {' '.join(str(message).split())}", err=True)
    except (OSError, ValueError):
        pass


def need_journal_directory(db: str | None) -> None:
    """A named journal (``--db``, ``$ESTIM_DB``) goes in a directory that exists: a
    mistyped path would otherwise make its directories and record the session where
    nobody looks. (The default journal's directory is estim's own: made when needed.)"""
    if db is None:
        return
    path = Path(db).expanduser()
    if not path.parent.is_dir():
        fail(f"no directory {path.parent} for the journal {path}; create it first, or check --db")


F = TypeVar("F", bound=Callable[..., Any])


def port_option(function: F) -> F:
    """``--port``/``-p``, defaulting to $ESTIM_PORT."""
    decorate = click.option(
        "--port",
        "-p",
        envvar="ESTIM_PORT",
        metavar="URL",
        help="The unit: /dev/ttyUSB0, COM3, socket://HOST:PORT, sim:// (a simulated unit). "
        "Default: $ESTIM_PORT.",
    )
    return decorate(function)


def need_port(port: str | None) -> str:
    if port:
        return port
    from estim.device import ports_hint

    fail(f"no unit given: pass --port URL or set ESTIM_PORT; {ports_hint()}")


def connect_or_fail(port: str) -> Any:
    """``estim.connect`` with its errors turned into one-line failures."""
    from estim.device import connect
    from estim.errors import LinkError, PortNotFound, RemoteProtocolError

    try:
        return connect(port)
    except PortNotFound as err:
        fail(str(err), USAGE)
    except (LinkError, RemoteProtocolError) as err:
        fail(str(err), UNREACHABLE)


def echo_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, default=str))
    sys.stdout.flush()
