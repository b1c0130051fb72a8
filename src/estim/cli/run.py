"""``estim run``: one timed session, with a summary, a confirmation and a live view."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from estim.cli.common import (
    DECLINED,
    EXIT_CODES_HELP,
    INTERNAL,
    JOURNAL,
    OK,
    STOPPED,
    UNIT_FAULT,
    UNREACHABLE,
    USAGE,
    Failure,
    echo_json,
    error_line,
    fail,
    need_journal_directory,
    need_port,
    port_option,
)
from estim.cli.events import EventQueue, describe

if TYPE_CHECKING:
    from estim.config import ClinicConfig, Preset
    from estim.device import Device
    from estim.plan import SessionPlan
    from estim.record import SessionRecord
    from estim.signals import SignalLatch

CHANNEL_HELP = (
    "A channel, CH:FREQ_HZ:PW_US:MA (1:2:250:12 is channel 1 at 2 Hz, 250 us, 12 mA), or CH:MA "
    "with --preset. Repeat for more channels."
)

OUTCOME_EXIT = {
    "completed": OK,
    "stopped": STOPPED,
    "faulted": UNIT_FAULT,
    "link_lost": UNREACHABLE,
    "refused": USAGE,
}


def load_clinic_config() -> ClinicConfig:
    from estim.config import ConfigError, load_config

    try:
        return load_config()
    except ConfigError as err:
        fail(str(err))


def _short(text: str) -> str:
    """A piece of the command line as typed, cut short if long (one short line)."""
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _number(text: str, what: str, spec: str) -> float:
    """A number as typed: a whole number exactly, whatever its size (the plan judges
    it: 400 digits are out of range, not an overflow), else a float."""
    import math

    from estim.safety import quoted

    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        fail(f"-c {spec}: {what} {quoted(text)} is not a number")
    if not math.isfinite(value):
        fail(f"-c {spec}: {what} {quoted(text)} is not a finite number")
    return value


def parse_channel(spec: str, preset: Preset | None, waveform: str | None) -> dict[str, Any]:
    """``CH:FREQ_HZ:PW_US:MA`` or, with a preset, ``CH:MA``."""
    from estim.safety import quoted

    parts = spec.split(":")
    said = _short(spec)
    if len(parts) == 4:
        if preset is not None:  # refused, not merged: which one would the clinician mean?
            fail(
                f"-c {said} sets its own frequency and pulse width, and --preset {preset.name} "
                f"sets them too; give -c CH:MA with the preset, or drop --preset"
            )
        ch, freq, pw, ma = parts
        fields: dict[str, Any] = {}
        fields["frequency_hz"] = _number(freq, "frequency", said)
        if fields["frequency_hz"] <= 0:
            fail(f"-c {said}: frequency {_short(freq)} Hz must be above 0")
        pw_value = _number(pw, "pulse width", said)
        if pw_value != int(pw_value):
            fail(f"-c {said}: pulse width {quoted(pw)} must be whole microseconds")
        fields["pulse_width_us"] = int(pw_value)
        if fields["pulse_width_us"] <= 0:
            fail(f"-c {said}: pulse width {_short(pw)} us must be above 0")
    elif len(parts) == 2:
        if preset is None:
            fail(f"-c {said}: CH:MA needs --preset; or give CH:FREQ_HZ:PW_US:MA (e.g. 1:2:250:12)")
        ch, ma = parts
        fields = dict(preset.channel_fields())
    else:
        fail(
            f"-c {quoted(spec)} is not CH:FREQ_HZ:PW_US:MA (e.g. 1:2:250:12) or CH:MA with --preset"
        )
    channel = _number(ch, "channel", said)
    if channel != int(channel) or not 1 <= channel <= 8:
        fail(f"-c {said}: channel {quoted(ch)} must be a whole number 1-8")
    fields["channel"] = int(channel)
    fields["amplitude_ma"] = _number(ma, "amplitude", said)
    if fields["amplitude_ma"] <= 0:
        fail(f"-c {said}: amplitude {_short(ma)} mA must be above 0 mA")
    if waveform:
        fields["waveform"] = waveform
    return fields


def plan_error(err: Exception) -> str:
    """The first problem pydantic found, as one line."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        first = err.errors()[0]
        message = str(first.get("msg", err)).removeprefix("Value error, ")
        where = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int))
        if where and where not in message and not message.startswith("channel "):
            message = f"{where}: {message}"
        return message
    return str(err)


def build_plan(
    *,
    dwell: str,
    ramp: str | None,
    channels: tuple[str, ...],
    preset_name: str | None,
    waveform: str | None,
    watchdog: float,
    context: dict[str, str | None],
    config: ClinicConfig,
) -> SessionPlan:
    from estim.plan import ChannelPlan, SessionPlan

    preset = None
    if preset_name is not None:
        preset = config.presets.get(preset_name)
        if preset is None:
            fail(
                f"unknown preset {preset_name!r}; known: {', '.join(config.presets)} (see: estim presets)"
            )
    if not channels:
        fail(
            "no channel given: add -c CH:FREQ_HZ:PW_US:MA (e.g. -c 1:2:250:12), or --preset NAME -c CH:MA"
        )
    fields = [parse_channel(spec, preset, waveform) for spec in channels]
    for one in fields:  # each channel on its own first, so its refusal names it
        try:
            ChannelPlan.model_validate(one)
        except ValueError as err:
            said = plan_error(err)
            fail(said if said.startswith("channel ") else f"channel {one['channel']}: {said}")
    raw: dict[str, Any] = {"dwell": dwell, "channels": fields, "watchdog": watchdog}
    if ramp is not None:
        raw["ramp"] = ramp
    raw.update({k: v for k, v in context.items() if v is not None})
    try:
        plan = SessionPlan.model_validate(raw)
    except ValueError as err:
        fail(plan_error(err))
    problems = config.limits.plan_problems(plan)
    if problems:
        fail(f"{problems[0]} (clinic config {config.path})")
    return plan


def _outside_the_unit(
    url: str, specs: tuple[str, ...], preset: Preset | None, waveform: str | None
) -> str | None:
    """A channel outside the unit's own frequency or pulse-width range, in its words
    (asked only when a channel was already refused; HELLO and STATUS, never output)."""
    from estim.device import connect
    from estim.errors import EstimError
    from estim.safety import shown

    try:
        fields = [parse_channel(spec, preset, waveform) for spec in specs]
        with connect(url) as device:
            unit = device.info
    except (EstimError, Failure):
        return None
    for f in fields:
        ch, hz, us = f["channel"], f["frequency_hz"], f["pulse_width_us"]
        if not unit.frequency_min_hz <= hz <= unit.frequency_max_hz:
            return (
                f"channel {ch}: {shown(hz)} Hz is outside the unit's "
                f"{unit.frequency_min_hz:g}-{unit.frequency_max_hz:g} Hz"
            )
        if not unit.pulse_width_min_us <= us <= unit.pulse_width_max_us:
            return (
                f"channel {ch}: {shown(us)} us is outside the unit's "
                f"{unit.pulse_width_min_us}-{unit.pulse_width_max_us} us"
            )
    return None


def summary(plan: SessionPlan, device: Device) -> list[str]:
    from estim import words
    from estim.durations import format_duration

    unit = device.info
    lines = [
        f"Unit     {unit.model} serial {unit.serial_number} on {device.url}"
        + ("  (SIMULATED)" if unit.simulated else ""),
        f"Dwell    {format_duration(plan.dwell)}   ramp {format_duration(plan.ramp)} up and down"
        f"   watchdog {plan.watchdog:g} s",
    ]
    for ch in plan.channels:
        lines.append(f"Channel {ch.channel}  {words.channel(ch)}")
    context = [
        f"{k} {v}"
        for k, v in (
            ("patient", plan.patient_ref),
            ("site", plan.site),
            ("condition", plan.condition),
        )
        if v
    ]
    if context:
        lines.append("For      " + ", ".join(context))
    return lines


def exit_code(record: SessionRecord) -> int:
    why = record.stop_reason or ""
    if record.journal_error:
        return JOURNAL
    if record.outcome == "aborted":
        if why.startswith("internal error in estim"):
            return INTERNAL
        return JOURNAL if why.startswith("journal") else STOPPED
    if record.outcome == "stopped" and record.ended_by == "unit":
        return UNIT_FAULT  # the unit ended output before its dwell: not the operator
    return OUTCOME_EXIT.get(record.outcome or "", UNREACHABLE)


def final_line(record: SessionRecord) -> str:
    from estim.durations import format_duration

    delivered = "unknown" if record.delivered_s is None else format_duration(record.delivered_s)
    text = {
        "completed": "COMPLETED",
        "stopped": "STOPPED EARLY",
        "faulted": "UNIT FAULT",
        "link_lost": "LINK LOST",
        "aborted": "ABORTED",
    }.get(record.outcome or "", str(record.outcome).upper())
    reason = record.stop_reason or "no reason was recorded"
    reason = reason[:1].upper() + reason[1:]
    line = f"{text}: delivered {delivered} of {format_duration(record.planned_s)}. {reason}."
    if record.journal_error:
        line += f" The journal could not be written: {record.journal_error}"
    return line + f" Session {record.id}."


@click.command(epilog=EXIT_CODES_HELP)
@port_option
@click.option(
    "--dwell",
    "-d",
    required=True,
    metavar="DURATION",
    help="How long: 60-600 s, as 480, 8m, 90s, 1m30s or 8:00.",
)
@click.option("--channel", "-c", "channels", multiple=True, metavar="SPEC", help=CHANNEL_HELP)
@click.option(
    "--preset",
    metavar="NAME",
    help="Frequency, pulse width, waveform and mode from a preset (see estim presets).",
)
@click.option(
    "--ramp", metavar="DURATION", help="Ramp up at the start and down at the end (default 5s)."
)
@click.option(
    "--waveform",
    type=click.Choice(["biphasic_symmetric", "biphasic_asymmetric", "monophasic"]),
    help="Pulse shape for every channel (default biphasic_symmetric).",
)
@click.option(
    "--watchdog",
    type=click.FloatRange(0.2, 2.0),
    default=0.5,
    show_default=True,
    help="Seconds of silence after which the unit turns output off.",
)
@click.option("--patient", metavar="REF", help="An opaque patient reference (not a name).")
@click.option("--site", metavar="TEXT", help="Target site, e.g. 'left vastus lateralis'.")
@click.option("--condition", metavar="TEXT", help="The condition treated.")
@click.option("--clinician", metavar="TEXT", help="Who runs the session.")
@click.option("--notes", metavar="TEXT", help="Free notes for the record.")
@click.option("--yes", "-y", is_flag=True, help="Start without asking for confirmation.")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per event on stdout, the record last."
)
@click.option(
    "--db",
    envvar="ESTIM_DB",
    metavar="PATH",
    help="The journal (default: $ESTIM_DB, else estim.db in the app directory).",
)
def run(
    port: str | None,
    dwell: str,
    channels: tuple[str, ...],
    preset: str | None,
    ramp: str | None,
    waveform: str | None,
    watchdog: float,
    patient: str | None,
    site: str | None,
    condition: str | None,
    clinician: str | None,
    notes: str | None,
    yes: bool,
    as_json: bool,
    db: str | None,
) -> int:
    """Run one timed session: check the plan, show it, confirm, then stimulate.

    On a terminal: a live countdown; up/down or +/- change the selected channel's
    amplitude by one step, a digit selects a channel, space, q or Ctrl-C stop at
    once. Elsewhere: one line per event (or one JSON object with --json).
    """
    config = load_clinic_config()
    try:
        plan = build_plan(
            dwell=dwell,
            ramp=ramp,
            channels=channels,
            preset_name=preset,
            waveform=waveform,
            watchdog=watchdog,
            context={
                "patient_ref": patient,
                "site": site,
                "condition": condition,
                "clinician": clinician,
                "notes": notes,
            },
            config=config,
        )
    except Failure as refused:
        if port and "channel" in refused.message:  # the unit's own range says more
            outside = _outside_the_unit(port, channels, config.presets.get(preset or ""), waveform)
            if outside:
                also = refused.message.split(": ", 1)[-1]
                fail(f"{outside}; besides, {also}")
        raise
    url = need_port(port)
    need_journal_directory(db)
    from estim.device import connect
    from estim.errors import LinkError, PortNotFound, RemoteProtocolError
    from estim.signals import SignalLatch, stop_on_signals

    try:  # the clinic's limits hold for the plan and every live change on this unit
        device = connect(url, clinic=config.limits)
    except PortNotFound as err:
        fail(str(err), USAGE)
    except (LinkError, RemoteProtocolError) as err:
        fail(str(err), UNREACHABLE)
    with device:
        problems = device.limits.plan_problems(plan)
        if problems:
            fail(
                f"{problems[0]} (clinic config {config.path})"
                if "clinic" in problems[0]
                else problems[0]
            )
        for warning in device.limits.clinic_wider_than_unit():
            error_line(f"warning: {warning} (clinic config {config.path})")
        out = sys.stderr if as_json else sys.stdout
        for line in summary(plan, device):
            click.echo(line, file=out)
        if not yes and not click.confirm("Start stimulation?", default=False, err=as_json):
            error_line("not started: the operator declined")
            return DECLINED
        latch = SignalLatch()
        with stop_on_signals(latch):  # from here on a signal stops the session, even a starting one
            record = _start_and_follow(device, plan, latch, db=db, as_json=as_json)
    if as_json:
        echo_json({"record": record.model_dump(mode="json")})
    else:
        _safe_echo(final_line(record))
    return exit_code(record)


def _start_and_follow(
    device: Device, plan: SessionPlan, latch: SignalLatch, *, db: str | None, as_json: bool
) -> SessionRecord:
    from estim.errors import DeviceError, JournalError, LinkError, PlanError
    from estim.journal import Journal, NotAJournal
    from estim.protocol import ErrorCode

    try:
        journal = Journal(db) if db else Journal()
    except JournalError as err:  # a wrong --db is bad usage; a journal that fails, exit 6
        fail(str(err), USAGE if isinstance(err, NotAJournal) else JOURNAL)
    with journal:
        if latch.pending is not None:
            fail(f"not started: {latch.pending[1]}", STOPPED)
        events = EventQueue(device.clock)
        try:
            session = device.start(plan, on_event=events.put, journal=journal)
        except DeviceError as err:
            unit_side = (ErrorCode.FAULT_LATCHED, ErrorCode.LEAD_OFF, ErrorCode.INTERNAL)
            fail(str(err), UNIT_FAULT if err.code in unit_side else USAGE)
        except PlanError as err:
            fail(str(err), USAGE)
        except JournalError as err:
            fail(str(err), JOURNAL)
        except LinkError as err:
            fail(str(err), UNREACHABLE)
        latch.attach(session)
        return _follow(session, events, as_json=as_json)


def _safe_echo(line: str) -> None:
    try:
        click.echo(line)
    except (OSError, ValueError):
        pass  # the terminal closed (SIGHUP); the record is in the journal


def _follow(session: Any, events: EventQueue, *, as_json: bool) -> SessionRecord:
    """Show the session until it ends."""
    if not as_json and sys.stdin.isatty() and sys.stdout.isatty():
        from estim.cli.live import LiveView

        LiveView(session, events).run()
    else:
        while True:
            event = events.get(timeout=1.0)  # events wake us; the timeout is a backstop
            if event is None:
                if session.state.is_end and events.empty():
                    break
                continue
            if as_json:
                try:
                    echo_json(event.model_dump(mode="json"))
                except (OSError, ValueError):
                    pass
            else:
                text = describe(event, session.id)
                if text:
                    _safe_echo(f"{event.utc[11:19]}  {text}")
            if event.kind == "ended" and events.empty():
                break
    record: SessionRecord = session.wait()
    return record
