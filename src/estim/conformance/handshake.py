"""Clauses 4 and 5: the handshake, and whether DEVICE_INFO describes a usable unit."""

from __future__ import annotations

from estim.protocol import (
    FLAG_SIMULATED,
    IMPEDANCE_UNKNOWN,
    MAX_CHANNELS,
    OUTPUT_STATES,
    PROTOCOL_VERSION,
    ClearFault,
    DeviceInfo,
    Hello,
    Mode,
    State,
    Status,
    Stop,
    StopReason,
    Waveform,
)

from .clause import FAIL, PASS, Clause, Context, Row
from .limits import NoSession, channel_config, session_shape
from .matching import describe

HELLO_RULE = ("4", "HELLO(1, 1) is answered DEVICE_INFO, protocol version 1")
INFO_RULE = ("5", "DEVICE_INFO limits are coherent; amplitude step <= 1% of the maximum")
HELLO_TRIES = 4
IDLE_RULE = ("5.2, 6", "STATUS in IDLE: one entry per channel, output zero, no impedance")


def _rules(ctx: Context) -> list[tuple[str, str]]:
    return [HELLO_RULE, INFO_RULE, IDLE_RULE]


def _run(ctx: Context) -> list[Row]:
    port = ctx.port
    port.drain()
    port.write(b"\x00")  # a host SHOULD drop any partial frame left on the line (3.4)
    # a unit may still be starting (some reset when their port opens): the same HELLO
    # up to HELLO_TRIES times, as a host retries (9)
    hello = Hello(seq=port.next_seq(), min_version=1, max_version=1)
    got, attempt = None, 0
    while got is None and attempt < HELLO_TRIES:
        attempt += 1
        got = port.ask(hello, seq=hello.seq)
    if got is None:
        ctx.unreachable = f"no answer to {HELLO_TRIES} HELLOs"
        return [Row(*HELLO_RULE, FAIL, f"{ctx.unreachable}: is this an estim unit?")]
    info = got.message
    if not isinstance(info, DeviceInfo):
        return [Row(*HELLO_RULE, FAIL, f"expected DEVICE_INFO, got {describe(got.as_dict())}")]
    rows = [_hello_row(info, attempt)]
    ctx.info = info
    rows.append(Row(*INFO_RULE, *_sanity(info)))
    rows.append(Row(*IDLE_RULE, *_idle(ctx, info)))
    return rows


def _hello_row(info: DeviceInfo, attempt: int) -> Row:
    simulated = ", simulated" if info.flags & FLAG_SIMULATED else ""
    who = f"{info.model or '(no model)'} {info.serial_number or '(no serial)'}"
    seen = f"{who} (firmware {info.firmware or '?'}{simulated})"
    if attempt > 1:
        seen += f"; answered HELLO number {attempt}"
    if info.protocol_version != PROTOCOL_VERSION:
        return Row(*HELLO_RULE, FAIL, f"expected protocol_version 1, got {info.protocol_version}")
    return Row(*HELLO_RULE, PASS, seen)


def _sanity(info: DeviceInfo) -> tuple[str, str]:
    i = info
    problems = []
    if not 1 <= i.channel_count <= MAX_CHANNELS:
        problems.append(f"channel_count {i.channel_count} is not 1..{MAX_CHANNELS}")
    if i.flags & ~FLAG_SIMULATED:
        problems.append(f"flags 0x{i.flags:04x} sets bits version 1 does not define")
    for name, bits, known in (
        ("waveforms", i.waveforms, len(Waveform)),
        ("modes", i.modes, len(Mode)),
    ):
        if bits == 0 or bits >> known:
            problems.append(f"{name} 0b{bits:b} (must name some of the {known} defined)")
    if i.amplitude_step_ua == 0 or i.amplitude_step_ua * 100 > i.amplitude_max_ua:
        problems.append(
            f"amplitude step {i.amplitude_step_ua} uA is not within 1% of the maximum "
            f"{i.amplitude_max_ua} uA (SAFETY.md 3)"
        )
    for low, high, unit in (
        ("frequency_min_dhz", "frequency_max_dhz", "dHz"),
        ("pulse_width_min_us", "pulse_width_max_us", "us"),
        ("watchdog_min_ms", "watchdog_max_ms", "ms"),
        ("dwell_min_ms", "dwell_max_ms", "ms"),
    ):
        lo, hi = getattr(i, low), getattr(i, high)
        if lo == 0 or lo > hi:
            problems.append(f"{low}..{high} is {lo}..{hi} {unit}")
    if i.slew_max_ua_per_s == 0:
        problems.append("slew_max_ua_per_s is 0")
    if i.lead_off_ohm == 0:
        problems.append("lead_off_ohm is 0")
    if not problems:
        try:
            shape = session_shape(i, i.dwell_min_ms)
            channel_config(i, 1, shape.amplitude_ua)
        except NoSession as err:
            problems.append(f"no session is possible: {err}")
    if problems:
        return FAIL, "; ".join(problems)
    return PASS, (
        f"{i.channel_count} channel(s), {i.amplitude_step_ua / 1000:g}-{i.amplitude_max_ua / 1000:g}"
        f" mA, {i.frequency_min_dhz / 10:g}-{i.frequency_max_dhz / 10:g} Hz,"
        f" {i.pulse_width_min_us}-{i.pulse_width_max_us} us,"
        f" slew {i.slew_max_ua_per_s / 1000:g} mA/s,"
        f" watchdog {i.watchdog_min_ms}-{i.watchdog_max_ms} ms,"
        f" dwell {i.dwell_min_ms / 1000:g}-{i.dwell_max_ms / 1000:g} s,"
        f" ramp <= {i.ramp_max_ms / 1000:g} s, lead-off above {i.lead_off_ohm} ohm"
    )


def _idle(ctx: Context, info: DeviceInfo) -> tuple[str, str]:
    """Bring the unit to IDLE (output left on by another host is stopped; a fault
    left latched is cleared), then judge its STATUS."""
    port = ctx.port
    status = port.status()
    if status is None:
        return FAIL, "no answer to GET_STATUS"
    found = []
    if status.state in OUTPUT_STATES:
        port.ask(Stop(reason=StopReason.OPERATOR))
        found.append(f"output was on (session 0x{status.session_id:08X}): stopped it")
    if status.state == State.FAULT:
        port.ask(ClearFault())
        found.append(f"a fault was latched (faults 0b{status.faults:b}): cleared it")
    if found:
        status = port.status()
        if status is None:
            return FAIL, "no answer to GET_STATUS"
    problems = _idle_problems(status, info)
    note = "; ".join(found)
    if problems:
        return FAIL, "; ".join(problems + ([f"(before: {note})"] if note else []))
    seen = f"IDLE, {len(status.channels)} channel(s) at 0 uA, impedance not measured"
    return PASS, f"{seen}; {note}" if note else seen


def _idle_problems(status: Status, info: DeviceInfo) -> list[str]:
    problems = []
    if status.state != State.IDLE:
        problems.append(f"expected state IDLE, got {status.state.name}")
    if len(status.channels) != info.channel_count:
        problems.append(
            f"expected {info.channel_count} channel entries, got {len(status.channels)}"
        )
    for n, ch in enumerate(status.channels, 1):
        if ch.amplitude_ua or ch.setpoint_ua:
            problems.append(f"channel {n}: amplitude {ch.amplitude_ua}, setpoint {ch.setpoint_ua}")
        if ch.impedance_ohm != IMPEDANCE_UNKNOWN:
            problems.append(f"channel {n}: impedance {ch.impedance_ohm} reported while idle")
    if status.faults:
        problems.append(f"faults 0b{status.faults:b} latched")
    return problems


CLAUSES = [Clause("handshake", _rules, _run)]
