"""``estim simulate``: a simulated unit that other programs open as a serial port."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from estim.sim.unit import LogEntry

OPTIONS_HELP = """\
KEY=VALUE pairs are the unit's options (the same as a sim:// URL's query): unit limits
(channels, amplitude_max_ma, amplitude_step_ma, slew_ma_per_s, frequency_min_hz,
frequency_max_hz, pulse_width_min_us, pulse_width_max_us, watchdog_min_ms,
watchdog_max_ms, dwell_min_s, dwell_max_s, ramp_max_s, lead_off_ohm,
compliance_v, impedance_ohm, model, serial); faults, in seconds after output
starts in every session (lead_off_at=S[:CH], impedance_at=S:CH:OHM,
over_current_at=S[:CH], estop_at=S, reset_at=S, internal_at=S); the link
(drop, corrupt, duplicate, delay as probabilities, delay_ms, cut_at=S:DURATION,
baud, seed).
"""


def _human(entry_json: dict[str, object]) -> str | None:
    kind = entry_json["kind"]
    if kind == "level":
        return None
    rest = " ".join(f"{k}={v}" for k, v in entry_json.items() if k not in ("t", "kind"))
    return f"{time.strftime('%H:%M:%S')} {kind} {rest}".rstrip()


@click.command(epilog=OPTIONS_HELP)
@click.option(
    "--pty", "use_pty", is_flag=True, help="Serve on a new pseudo-terminal (the default)."
)
@click.option(
    "--tcp",
    metavar="[HOST:]PORT",
    help="Serve on TCP instead (loopback unless HOST says otherwise).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON line per unit event on stdout."
)
@click.option("-q", "--quiet", is_flag=True, help="Print only the PORT line.")
@click.argument("options", nargs=-1, metavar="[KEY=VALUE]...")
def simulate(
    use_pty: bool, tcp: str | None, as_json: bool, quiet: bool, options: tuple[str, ...]
) -> None:
    """Serve a simulated estim unit until Ctrl-C or SIGTERM.

    The first line on stdout is ``PORT <path or URL>``: open it with
    ``estim run --port ...`` or any serial program. With --json, each later line
    is one thing the unit did, with a monotonic timestamp in seconds.
    """
    from estim.sim.options import parse_options
    from estim.sim.server import pty_server, stop_on_signals, tcp_server

    if use_pty and tcp:
        raise click.UsageError("choose one of --pty and --tcp")
    query: dict[str, list[str]] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise click.UsageError(f"simulator option {option!r} is not KEY=VALUE")
        query.setdefault(key, []).append(value)
    try:
        spec = parse_options(query)
    except ValueError as err:
        raise click.UsageError(str(err)) from None

    def on_log(entry: LogEntry) -> None:
        data = entry.as_json()
        if as_json:
            click.echo(json.dumps(data), nl=True)
            sys.stdout.flush()
        elif not quiet:
            line = _human(data)
            if line:
                click.echo(line, err=True)

    try:
        if tcp:
            host, _, port_text = tcp.rpartition(":")
            if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
                raise click.UsageError(f"--tcp {tcp!r}: PORT must be a number 0..65535")
            server = tcp_server(spec, host or "127.0.0.1", int(port_text))
        else:
            server = pty_server(spec)
    except OSError as err:
        raise click.ClickException(f"cannot serve the simulated unit: {err}") from None
    with stop_on_signals(server):  # before PORT: a caller may signal as soon as it reads it
        click.echo(f"PORT {server.name}")
        sys.stdout.flush()
        if not quiet and not as_json:
            click.echo(f"simulated unit on {server.name}; Ctrl-C to stop", err=True)
        server.follow(on_log)
        server.run()
