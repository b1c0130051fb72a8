"""Boundary clauses (5.1, 5.3): every limit the unit reports in DEVICE_INFO, tried at
one step below its minimum, the minimum, the maximum and one step above, at
CONFIGURE_CHANNEL (amplitude, frequency, pulse width, pulse overlap), at START
(dwell, watchdog, ramp, slew) and at SET_AMPLITUDE (amplitude). The reply each
value must get comes from the spec's tables for the unit's own limits
(``replies``), so a unit that accepts one step too far, or refuses its own
maximum, fails the row that names the limit.

CONFIGURE_CHANNEL drives no current. START and SET_AMPLITUDE values that must be
accepted start output: those clauses run only on a confirmed test load, and stop
each session at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from estim.protocol import (
    Ack,
    ConfigureChannel,
    DeviceInfo,
    Mode,
    SetAmplitude,
    Start,
    Stop,
    StopReason,
    encode,
    message_to_dict,
)

from .clause import FAIL, PASS, SKIP, TICK_MS, Clause, Context, Row
from .limits import NoSession, channel_config, session_shape
from .matching import describe, describe_all
from .replies import UnitModel, reference_reply
from .sessions import Every, begin, drive, long_plan, said, to_idle

CONFIGURE_AMPLITUDE_RULE = (
    "5.1, 5.3",
    "CONFIGURE_CHANNEL amplitude: one step and the maximum accepted; 0, max + 1 step, off-step refused",
)
FREQUENCY_RULE = (
    "5.1, 5.3",
    "CONFIGURE_CHANNEL frequency: min and max accepted; min - 0.1 Hz, max + 0.1 Hz refused",
)
PULSE_WIDTH_RULE = (
    "5.1, 5.3",
    "CONFIGURE_CHANNEL pulse width: min and max accepted; min - 1 us, max + 1 us refused",
)
OVERLAP_RULE = (
    "5.1, 5.3",
    "pulse overlap: 2 x width x rate >= 1 s refused PULSE_WIDTH; 1 us narrower accepted",
)
DWELL_RULE = ("5.1, 5.3", "START dwell: min and max accepted; min - 1 ms, max + 1 ms refused")
WATCHDOG_RULE = (
    "5.1, 5.3",
    "START watchdog: min and max accepted; min - 1 ms, max + 1 ms refused",
)
RAMP_RULE = (
    "5.1, 5.3",
    "START ramp: ramp_max and dwell / 2 accepted; 1 ms longer refused RAMP",
)
SLEW_RULE = (
    "5.1, 5.3",
    "START slew: the shortest ramp slew_max allows accepted; 1 ms shorter refused RAMP",
)
SET_AMPLITUDE_RULE = (
    "5.1, 5.3, 7",
    "SET_AMPLITUDE: 0 and the maximum accepted and slewed; max + 1 step, off-step refused",
)
WINDOW = "exact: the reply the spec's tables give for the unit's own limits"

#: the fields of a reply the spec fixes
_KEYS = ("type", "error", "field", "channel")


def _fixed(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: reply[k] for k in _KEYS if k in reply}


class _Trial:
    """Values tried for one row: what each got against what the spec prescribes."""

    def __init__(self, rule: tuple[str, str]) -> None:
        self.rule = rule
        self.tried: list[str] = []
        self.problems: list[str] = []

    def judge(self, label: str, expected: dict[str, Any], got: dict[str, Any] | None) -> bool:
        want = _fixed(expected)
        self.tried.append(f"{label}: {describe(want) if len(want) > 1 else want['type']}")
        if got is None or {k: got.get(k) for k in want} != want:
            self.problems.append(f"{label}: expected {describe(want)}, got {describe(got, want)}")
            return False
        return True

    def row(self, passed: str, skip: str | None = None) -> Row:
        if self.problems:
            more = f"; and {len(self.problems) - 2} more" if len(self.problems) > 2 else ""
            seen = "; ".join(self.problems[:2]) + more
            return Row(*self.rule, FAIL, seen, tuple(self.tried), WINDOW)
        if not self.tried:
            return Row(*self.rule, SKIP, skip or "no value could be tried")
        return Row(*self.rule, PASS, passed, tuple(self.tried), WINDOW)


# --- CONFIGURE_CHANNEL: no current --------------------------------------------------------


def _configure_rules(ctx: Context) -> list[tuple[str, str]]:
    return [CONFIGURE_AMPLITUDE_RULE, FREQUENCY_RULE, PULSE_WIDTH_RULE, OVERLAP_RULE]


def _configure_run(ctx: Context) -> list[Row]:
    info, port = ctx.unit, ctx.port
    try:
        amplitude = ctx.targets.get(1) or session_shape(info, info.dwell_min_ms).amplitude_ua
        base = channel_config(info, 1, amplitude)
    except NoSession as err:
        return [Row(*r, SKIP, str(err)) for r in _configure_rules(ctx)]
    model = UnitModel(info)

    def attempt(trial: _Trial, label: str, message: ConfigureChannel) -> None:
        got = port.ask(message)
        expected = reference_reply(message_to_dict(message), model)
        trial.judge(label, expected, got.as_dict() if got is not None else None)

    try:
        rows = [
            _amplitudes(info, base, attempt),
            _frequencies(info, base, attempt),
            _pulse_widths(info, base, attempt),
            _overlap(info, base, attempt),
        ]
    finally:
        port.ask(base)  # channel 1 as the rest of the suite configures it
    return rows


_Attempt = Callable[[_Trial, str, ConfigureChannel], None]


def _amplitudes(info: DeviceInfo, base: ConfigureChannel, attempt: _Attempt) -> Row:
    trial = _Trial(CONFIGURE_AMPLITUDE_RULE)
    step, top = info.amplitude_step_ua, info.amplitude_max_ua
    values = [(0, "min - 1 step"), (step, "min: one step"), (top, "max")]
    if top + step <= 0xFFFFFFFF:
        values.append((top + step, "max + 1 step"))
    if step > 1:
        values.append((top - step // 2, "off-step"))
    for value, label in values:
        attempt(trial, f"amplitude_ua={value} ({label})", replace(base, amplitude_ua=value))
    return trial.row(f"{len(trial.tried)} amplitudes around 0..{top} uA in {step} uA steps")


def _frequencies(info: DeviceInfo, base: ConfigureChannel, attempt: _Attempt) -> Row:
    trial = _Trial(FREQUENCY_RULE)
    low, high = info.frequency_min_dhz, info.frequency_max_dhz
    narrow = replace(base, pulse_width_us=info.pulse_width_min_us)  # no overlap at the top
    for value, label in ((low - 1, "min - 1"), (low, "min"), (high, "max"), (high + 1, "max + 1")):
        if 0 <= value <= 0xFFFF:
            attempt(trial, f"frequency_dhz={value} ({label})", replace(narrow, frequency_dhz=value))
    return trial.row(f"{len(trial.tried)} rates around {low}..{high} dHz")


def _pulse_widths(info: DeviceInfo, base: ConfigureChannel, attempt: _Attempt) -> Row:
    trial = _Trial(PULSE_WIDTH_RULE)
    low, high = info.pulse_width_min_us, info.pulse_width_max_us
    slow = replace(base, frequency_dhz=info.frequency_min_dhz)  # no overlap at the widest
    for value, label in ((low - 1, "min - 1"), (low, "min"), (high, "max"), (high + 1, "max + 1")):
        if 0 <= value <= 0xFFFF:
            attempt(trial, f"pulse_width_us={value} ({label})", replace(slow, pulse_width_us=value))
    return trial.row(f"{len(trial.tried)} widths around {low}..{high} us")


def _overlap(info: DeviceInfo, base: ConfigureChannel, attempt: _Attempt) -> Row:
    """At the highest rate, the narrowest width whose two phases fill the period
    (2 x width x rate = 10,000,000 us x dHz) and one us narrower; the same through a
    dense-disperse alternate rate, if the unit offers the mode."""
    trial = _Trial(OVERLAP_RULE)
    top = info.frequency_max_dhz
    width = -(-10_000_000 // (2 * top))  # the narrowest that overlaps
    if not info.pulse_width_min_us < width <= info.pulse_width_max_us:
        why = (
            f"holds by the unit's own ranges: no width it accepts overlaps at its highest rate "
            f"({top} dHz needs {width} us; widths {info.pulse_width_min_us}.."
            f"{info.pulse_width_max_us} us)"
        )
        return Row(*OVERLAP_RULE, PASS, why, (), WINDOW)
    fast = replace(base, frequency_dhz=top)
    attempt(trial, f"{width} us at {top} dHz (overlaps)", replace(fast, pulse_width_us=width))
    attempt(trial, f"{width - 1} us at {top} dHz", replace(fast, pulse_width_us=width - 1))
    low = info.frequency_min_dhz
    if info.modes & (1 << Mode.DENSE_DISPERSE) and low < top:
        mixed = replace(
            base,
            mode=Mode.DENSE_DISPERSE,
            frequency_dhz=low,
            alt_frequency_dhz=top,
            switch_ms=1_000,
        )
        attempt(
            trial,
            f"dense-disperse {low}/{top} dHz, {width} us (overlaps at the alternate rate)",
            replace(mixed, pulse_width_us=width),
        )
        attempt(trial, f"dense-disperse, {width - 1} us", replace(mixed, pulse_width_us=width - 1))
    return trial.row(f"overlap refused at {width} us x {top} dHz, {width - 1} us accepted")


# --- START: accepted values start output -------------------------------------------------


def _start_rules(ctx: Context) -> list[tuple[str, str]]:
    return [DWELL_RULE, WATCHDOG_RULE, RAMP_RULE, SLEW_RULE]


def _start_run(ctx: Context) -> list[Row]:
    info, port = ctx.unit, ctx.port
    try:
        shape = session_shape(info, info.dwell_min_ms)
        configure = channel_config(info, 1, shape.amplitude_ua)
    except NoSession as err:
        return [Row(*r, SKIP, str(err)) for r in _start_rules(ctx)]
    got = port.ask(configure)
    if got is None or not isinstance(got.message, Ack):
        why = f"channel 1: CONFIGURE_CHANNEL got {said(got)}"
        return [Row(*r, FAIL, why) for r in _start_rules(ctx)]
    amplitude = shape.amplitude_ua
    ctx.targets[1] = amplitude
    model = replace(ctx.model(), targets={1: amplitude})
    shortest = -(-amplitude * 1000 // info.slew_max_ua_per_s)  # the slew's shortest ramp
    base = Start(
        session_id=0,
        dwell_ms=info.dwell_min_ms,
        ramp_ms=shortest,
        watchdog_ms=info.watchdog_max_ms,
        channel_mask=1,
    )

    def attempt(trial: _Trial, label: str, **fields: int) -> None:
        start = replace(base, session_id=port.new_session_id(), **fields)
        _try_start(ctx, trial, label, start, model)

    dwell = _Trial(DWELL_RULE)
    low, high = info.dwell_min_ms, info.dwell_max_ms
    for value, label in ((low - 1, "min - 1"), (low, "min"), (high, "max"), (high + 1, "max + 1")):
        if 0 <= value <= 0xFFFFFFFF:
            attempt(dwell, f"dwell_ms={value} ({label})", dwell_ms=value)
    watchdog = _Trial(WATCHDOG_RULE)
    low, high = info.watchdog_min_ms, info.watchdog_max_ms
    for value, label in ((low - 1, "min - 1"), (low, "min"), (high, "max"), (high + 1, "max + 1")):
        if 0 <= value <= 0xFFFF:
            attempt(watchdog, f"watchdog_ms={value} ({label})", watchdog_ms=value)
    ramp = _Trial(RAMP_RULE)
    longest = info.ramp_max_ms
    roomy = min(max(info.dwell_min_ms, 2 * (longest + 1)), info.dwell_max_ms)
    if 2 * longest <= roomy:
        attempt(
            ramp, f"ramp_ms={longest} (ramp_max), dwell {roomy}", ramp_ms=longest, dwell_ms=roomy
        )
        attempt(ramp, f"ramp_ms={longest + 1} (ramp_max + 1)", ramp_ms=longest + 1, dwell_ms=roomy)
    half = info.dwell_min_ms // 2
    if shortest <= half < longest:  # dwell / 2 binds before ramp_max does
        attempt(ramp, f"ramp_ms={half} (dwell_min / 2)", ramp_ms=half)
        attempt(ramp, f"ramp_ms={half + 1} (dwell_min / 2 + 1)", ramp_ms=half + 1)
    slew = _Trial(SLEW_RULE)
    if shortest >= 1:
        attempt(slew, f"{amplitude} uA, ramp_ms={shortest} (the shortest)", ramp_ms=shortest)
        attempt(
            slew, f"{amplitude} uA, ramp_ms={shortest - 1} (1 ms shorter)", ramp_ms=shortest - 1
        )
    return [
        dwell.row(f"dwell {info.dwell_min_ms}..{info.dwell_max_ms} ms, each bound"),
        watchdog.row(f"watchdog {info.watchdog_min_ms}..{info.watchdog_max_ms} ms, each bound"),
        ramp.row(f"ramp up to {longest} ms and dwell / 2, each bound"),
        slew.row(
            f"{amplitude} uA at {info.slew_max_ua_per_s} uA/s: {shortest} ms accepted, 1 ms less not"
        ),
    ]


def _try_start(ctx: Context, trial: _Trial, label: str, start: Start, model: UnitModel) -> None:
    """Send ``start``; an accepted one must be followed by OUTPUT_STARTED with its
    dwell, and is stopped at once; a refused one by nothing."""
    expected = reference_reply(message_to_dict(start), model)
    accepts = expected["type"] == "ACK"
    ctx.stimulated = True
    ex = ctx.port.exchange(encode(start), 2 if accepts else 1)
    frames = ex.dicts()
    answer = next(
        (f for f in frames if f.get("seq") == start.seq and f["type"] in ("ACK", "NACK")), None
    )
    others = [f for f in frames if f is not answer]
    if trial.judge(label, expected, answer):
        started = [f for f in others if f["type"] == "OUTPUT_STARTED"]
        if accepts and (len(started) != 1 or started[0].get("dwell_ms") != start.dwell_ms):
            trial.problems.append(
                f"{label}: ACK, then {describe_all(others)}; expected OUTPUT_STARTED(dwell_ms={start.dwell_ms})"
            )
        elif not accepts and started:
            trial.problems.append(f"{label}: refused, yet {describe_all(started)}")
    if answer is not None and answer["type"] == "ACK":
        to_idle(ctx, f"START {label}")


# --- SET_AMPLITUDE: in a live session ----------------------------------------------------


def _set_rules(ctx: Context) -> list[tuple[str, str]]:
    return [SET_AMPLITUDE_RULE]


def _set_run(ctx: Context) -> list[Row]:
    info, port = ctx.unit, ctx.port
    shape = long_plan(ctx)
    live = begin(ctx, shape, watchdog_ms=info.watchdog_max_ms)
    trial = _Trial(SET_AMPLITUDE_RULE)
    step, top = info.amplitude_step_ua, info.amplitude_max_ua

    def change(value: int) -> SetAmplitude:
        return SetAmplitude(session_id=live.session_id, channel=1, amplitude_ua=value)

    def expect(value: int) -> dict[str, Any]:
        if value > top or value % step:
            return {"type": "NACK", "error": "OUT_OF_RANGE", "field": "AMPLITUDE", "channel": 1}
        return {"type": "ACK"}

    values = [(0, "0 (min)")]
    if top + step <= 0xFFFFFFFF:
        values.append((top + step, "max + 1 step"))
    if step > 1:
        values.append((top - step // 2, "off-step"))
    for value, label in values:
        got = port.ask(change(value))
        trial.judge(
            f"amplitude_ua={value} ({label})", expect(value), got.as_dict() if got else None
        )
    # the maximum, after a STATUS in the same write: accepted, then slewed from where
    # the level was, never faster than the session's slope (STATUS for 100 ms after)
    bracket = port.bracketed(change(top))
    answer = bracket.answer.as_dict() if bracket.answer is not None else None
    if trial.judge(f"amplitude_ua={top} (max)", {"type": "ACK"}, answer):
        before = bracket.before
        after = [bracket.after]
        drive(
            ctx,
            until=lambda: False,
            limit=ctx.clock.now() + 0.1,
            every=[Every(0.02, lambda: after.append(port.status()))],
        )
        statuses = [s for s in after if s is not None and s.channels]
        if before is None or not before.channels or len(statuses) != len(after):
            trial.problems.append("no STATUS answered around the SET_AMPLITUDE to the maximum")
        else:
            for status in statuses:
                dt = (status.time_ms - before.time_ms) & 0xFFFFFFFF
                rise = status.channels[0].amplitude_ua - before.channels[0].amplitude_ua
                if rise > shape.slope * (dt + TICK_MS) + step:
                    trial.problems.append(
                        f"output went from {before.channels[0].amplitude_ua} to "
                        f"{status.channels[0].amplitude_ua} uA in {dt} ms: a jump, not a slew "
                        f"at {shape.slope:g} uA/ms"
                    )
                    break
            if statuses[-1].channels[0].setpoint_ua != top:
                trial.problems.append(
                    f"setpoint {statuses[-1].channels[0].setpoint_ua} uA after it, not {top}"
                )
    port.ask(Stop(reason=StopReason.OPERATOR))
    return [
        trial.row(
            f"0 and {top} uA accepted, {top} slewed at {shape.slope:g} uA/ms; the rest refused"
        )
    ]


IDLE_CLAUSES = [Clause("boundaries CONFIGURE_CHANNEL", _configure_rules, _configure_run)]
OUTPUT_CLAUSES = [
    Clause("boundaries START", _start_rules, _start_run, stimulating=True),
    Clause("boundaries SET_AMPLITUDE", _set_rules, _set_run, stimulating=True),
]
