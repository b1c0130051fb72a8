"""``estim ports``, ``info``, ``stop``, ``clear-fault`` and ``presets``."""

from __future__ import annotations

import click

from estim.cli.common import (
    OK,
    UNREACHABLE,
    USAGE,
    connect_or_fail,
    echo_json,
    fail,
    need_port,
    port_option,
)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
def ports(as_json: bool) -> int:
    """List this machine's serial ports; known estim units are marked.

    sim:// (a simulated unit) is always available too.
    """
    from estim.device import list_ports

    found = list_ports()
    if as_json:
        echo_json(
            [
                {
                    "device": p.device,
                    "description": p.description,
                    "hwid": p.hwid,
                    "vid": p.vid,
                    "pid": p.pid,
                    "estim_unit": p.known_unit,
                }
                for p in found
            ]
        )
        return OK
    if not found:
        click.echo("No serial ports found.")
    for p in found:
        mark = f"  <- {p.known_unit}" if p.known_unit else ""
        click.echo(f"{p.device:<20} {p.description}{mark}")
    click.echo("sim://               a simulated unit (for trying estim out)")
    return OK


@click.command()
@port_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def info(port: str | None, as_json: bool) -> int:
    """Show the unit's model, serial, firmware, protocol version, channels and limits."""
    url = need_port(port)
    with connect_or_fail(url) as device:
        unit = device.info
    if as_json:
        echo_json({"port": url, **unit.as_dict()})
        return OK
    rows = [
        (
            "unit",
            f"{unit.model}, serial {unit.serial_number}, firmware {unit.firmware}"
            + (" (simulated)" if unit.simulated else ""),
        ),
        ("port", url),
        ("protocol", f"version {unit.protocol_version}"),
        ("channels", str(unit.channels)),
        (
            "amplitude",
            f"up to {unit.amplitude_max_ma:g} mA in steps of {unit.amplitude_step_ma:g} mA",
        ),
        ("frequency", f"{unit.frequency_min_hz:g}-{unit.frequency_max_hz:g} Hz"),
        ("pulse width", f"{unit.pulse_width_min_us}-{unit.pulse_width_max_us} us"),
        ("slew", f"up to {unit.slew_max_ma_per_s:g} mA/s"),
        ("dwell", f"{unit.dwell_min_s:g}-{unit.dwell_max_s:g} s (estim allows 60-600 s)"),
        ("ramp", f"up to {unit.ramp_max_s:g} s"),
        ("watchdog", f"{unit.watchdog_min_s:g}-{unit.watchdog_max_s:g} s"),
        ("lead-off", f"above {unit.lead_off_ohm} ohm"),
        ("waveforms", ", ".join(sorted(unit.waveforms))),
        ("modes", ", ".join(sorted(unit.modes))),
    ]
    for label, value in rows:
        click.echo(f"{label:<12} {value}")
    return OK


@click.command()
@port_option
def stop(port: str | None) -> int:
    """Stop any output on the unit now (from a second terminal, say).

    Whatever name the port is given by (a symlink such as /dev/serial/by-id/...,
    a relative path), the estim process holding it, from the CLI or a charting
    app, is told to stop its session. If none holds it, STOP goes to the unit
    directly.
    """
    from estim.device import connect
    from estim.errors import LinkError, PortBusy, PortNotFound
    from estim.owner import port_identity, request_stop
    from estim.protocol import StopReason

    url = need_port(port)
    answer = request_stop(port_identity(url))
    if answer is not None:
        click.echo(f"Output stopped: {answer}.")
        return OK
    try:
        with connect(url) as device:  # connecting stops any output left without a host
            unit = f"{device.info.model} {device.info.serial_number} ({url})"
            orphan = device.stopped_orphan
            device.stop(StopReason.OPERATOR)
    except PortBusy:
        fail(f"port {url} is held by another program, not estim; stop it there", UNREACHABLE)
    except PortNotFound as err:
        fail(str(err), USAGE)
    except LinkError as err:
        fail(str(err), UNREACHABLE)
    if orphan is not None:
        click.echo(f"Output stopped on {unit}: session {orphan:08x} was running with no host.")
    else:
        click.echo(f"No output was on {unit}; no estim process held it. STOP sent anyway.")
    return OK


@click.command("clear-fault")
@port_option
def clear_fault(port: str | None) -> int:
    """Clear a fault latched on the unit (check the electrodes first)."""
    from estim.info import UnitStatus

    url = need_port(port)
    with connect_or_fail(url) as device:
        before: UnitStatus = device.status()
        device.clear_fault()
    if before.faults:
        from estim.protocol import Fault

        names = ", ".join(
            Fault(f).name if f in Fault._value2member_map_ else str(f)
            for f in sorted(before.faults)
        )
        click.echo(f"Cleared: {names}.")
    else:
        click.echo("No fault was latched.")
    return OK


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
def presets(as_json: bool) -> int:
    """List the presets ``estim run --preset`` takes (built in, and the clinic's)."""
    from estim.cli.run import load_clinic_config

    config = load_clinic_config()
    if as_json:
        echo_json(
            [
                {"name": p.name, "description": p.description, **p.channel_fields()}
                for p in config.presets.values()
            ]
        )
        return OK
    for p in config.presets.values():
        click.echo(f"{p.name:<16} {p.description}")
    return OK
