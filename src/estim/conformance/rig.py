"""Lead-off, on a test load that can open a channel (5.1, 6.2, 9): a START naming
an open electrode is refused LEAD_OFF, and an electrode opening during output
latches FAULT(LEAD_OFF) within 10 ms and stays latched until CLEAR_FAULT.

A resistor on every channel cannot open, so these clauses need to be told what
the load does (``Rig``): ``--open-channel CH`` (channel CH has no load for the
whole run) and ``--lead-off-at S:CH`` (a relay opens channel CH's load S seconds
after output starts, in every session, and closes it when output stops; S must
be later than the unit's smallest dwell, so that no other clause meets it).
Without them the clauses SKIP, and the report lists lead-off among what it did
not check. Drives current: run only on a confirmed test load.
"""

from __future__ import annotations

import math

from estim.protocol import (
    Ack,
    ClearFault,
    Fault,
    FaultRaised,
    Start,
    State,
    Stop,
    Stopped,
    StopReason,
    encode,
    message_to_dict,
)

from .clause import FAIL, PASS, SKIP, TICK_MS, Clause, Context, Row
from .limits import channel_config
from .matching import describe, describe_all
from .replies import reference_reply
from .sessions import (
    Every,
    begin,
    describe_status,
    drive,
    event_of,
    heartbeat,
    long_plan,
    rel,
    said,
    wait_for,
)

OPEN_RULE = (
    "5.1, 5.3",
    "START naming an open electrode: NACK LEAD_OFF, field CHANNEL, that channel",
)
LEAD_OFF_RULE = (
    "6.2, 9",
    "an electrode opening during output: FAULT(LEAD_OFF, channel) within 10 ms, STOPPED(FAULT)",
)
LATCHED_RULE = ("6.2", "LEAD_OFF stays latched until CLEAR_FAULT: START refused, STOP leaves FAULT")
#: the unit measures every electrode at least every 10 ms (PROTOCOL.md 9)
DETECTION_MS = 10
#: the rig's own switching time and timer: a relay opens within a few ms of its command
RIG_MS = 20
NO_OPEN = "needs a test load with one channel disconnected (--open-channel CHANNEL)"
NO_RELAY = "needs a test load that opens a channel during output (--lead-off-at SECONDS:CHANNEL)"


def _open_rules(ctx: Context) -> list[tuple[str, str]]:
    return [OPEN_RULE]


def _open_run(ctx: Context) -> list[Row]:
    channel = ctx.rig.open_channel
    if channel is None:
        return [Row(*OPEN_RULE, SKIP, NO_OPEN)]
    info, port = ctx.unit, ctx.port
    if not 2 <= channel <= info.channel_count:
        why = f"--open-channel {channel}: the suite drives channel 1; name another of 2..{info.channel_count}"
        return [Row(*OPEN_RULE, FAIL, why)]
    shape = long_plan(ctx)
    for n in (1, channel):
        configured = port.ask(channel_config(info, n, shape.amplitude_ua))
        if configured is None or not isinstance(configured.message, Ack):
            why = f"channel {n}: CONFIGURE_CHANNEL got {said(configured)}"
            return [Row(*OPEN_RULE, FAIL, why)]
        ctx.targets[n] = shape.amplitude_ua
    problems, tried = [], []
    for mask in (1 << (channel - 1), 1 | 1 << (channel - 1)):
        start = Start(
            seq=port.next_seq(),
            session_id=port.new_session_id(),
            dwell_ms=shape.dwell_ms,
            ramp_ms=shape.ramp_ms,
            watchdog_ms=info.watchdog_max_ms,
            channel_mask=mask,
        )
        want = reference_reply(message_to_dict(start), ctx.model())
        tried.append(f"channel_mask 0b{mask:b}: {describe(want)}")
        ctx.stimulated = True
        ex = port.exchange(encode(start), 1)
        got = ex.dicts()
        answer = next((f for f in got if f.get("seq") == start.seq), None)
        if answer is None or {k: answer.get(k) for k in want} != want or len(got) != 1:
            problems.append(
                f"channel_mask 0b{mask:b}: expected {describe(want)}, got {describe_all(got)}"
            )
            port.ask(Stop(reason=StopReason.OPERATOR))
    window = "exact"
    if problems:
        return [Row(*OPEN_RULE, FAIL, "; ".join(problems), tuple(tried), window)]
    return [
        Row(
            *OPEN_RULE,
            PASS,
            f"channel {channel} open: both STARTs refused LEAD_OFF naming it",
            tuple(tried),
            window,
        )
    ]


def _lead_off_rules(ctx: Context) -> list[tuple[str, str]]:
    return [LEAD_OFF_RULE, LATCHED_RULE]


def _lead_off_run(ctx: Context) -> list[Row]:
    if ctx.rig.lead_off is None:
        return [Row(*r, SKIP, NO_RELAY) for r in _lead_off_rules(ctx)]
    seconds, channel = ctx.rig.lead_off
    info, port = ctx.unit, ctx.port
    opens_ms = round(seconds * 1000)
    dwell = max(info.dwell_min_ms, opens_ms + 1000 + math.ceil(ctx.patience_s * 1000))
    if (
        opens_ms <= info.dwell_min_ms
        or dwell > info.dwell_max_ms
        or not 1 <= channel <= info.channel_count
    ):
        why = (
            f"--lead-off-at {seconds:g}:{channel} must open a channel of 1..{info.channel_count} after "
            f"the unit's smallest dwell ({info.dwell_min_ms} ms, the whole-session clause) and "
            f"before its longest ({info.dwell_max_ms} ms)"
        )
        return [Row(*r, FAIL, why) for r in _lead_off_rules(ctx)]
    channels = (1,) if channel == 1 else (1, channel)
    live = begin(
        ctx, long_plan(ctx), watchdog_ms=info.watchdog_max_ms, dwell_ms=dwell, channels=channels
    )
    fault = event_of(ctx, live, FaultRaised)
    beats: list[str] = []
    beat = min(0.1, info.watchdog_max_ms / 4000)
    drive(
        ctx,
        until=lambda: fault() is not None,
        limit=live.ack_t + seconds + ctx.patience_s,
        every=[Every(beat, heartbeat(ctx, live, beats), live.ack_t + beat)],
    )
    tried = (f"channel {channel} opened {opens_ms} ms after output started (the rig)",)
    window = f"FAULT at t0 + {opens_ms} .. {opens_ms + DETECTION_MS + TICK_MS + RIG_MS} ms (10 ms + 1 tick + {RIG_MS} ms for the rig)"
    at = fault()
    if at is None or not isinstance(at.message, FaultRaised):
        why = f"no FAULT within {opens_ms} ms + {ctx.patience_s:g} s of output starting; output stayed on"
        return [Row(*LEAD_OFF_RULE, FAIL, why, tried, window), Row(*LATCHED_RULE, SKIP, "no fault")]
    problems = list(beats)
    message = at.message
    when = rel(live, message.time_ms)
    if (message.fault, message.channel) != (Fault.LEAD_OFF, channel):
        problems.append(f"expected FAULT(fault=LEAD_OFF, channel={channel}), got {said(at)}")
    if not opens_ms <= when <= opens_ms + DETECTION_MS + TICK_MS + RIG_MS:
        problems.append(
            f"FAULT at {when} ms after output started; the electrode opened at {opens_ms} ms"
        )
    stopped = wait_for(ctx, event_of(ctx, live, Stopped), ctx.patience_s)
    if stopped is None or not isinstance(stopped.message, Stopped):
        problems.append("no STOPPED after the FAULT")
    elif (
        stopped.message.reason != StopReason.FAULT
        or abs(stopped.message.delivered_ms - when) > TICK_MS
    ):
        problems.append(f"expected STOPPED(reason=FAULT, delivered_ms={when}), got {said(stopped)}")
    status = port.status()
    if (
        status is None
        or status.state != State.FAULT
        or not status.faults & (1 << (Fault.LEAD_OFF - 1))
        or status.fault_channel != channel
        or any(c.amplitude_ua for c in status.channels)
    ):
        problems.append(
            f"STATUS after it: {describe_status(status)}, fault_channel {status.fault_channel if status else '?'}"
        )
    rows = [
        Row(*LEAD_OFF_RULE, FAIL, "; ".join(problems), tried, window)
        if problems
        else Row(
            *LEAD_OFF_RULE,
            PASS,
            f"FAULT(LEAD_OFF, {channel}) at {when} ms, {when - opens_ms} ms after the electrode opened; STOPPED(FAULT); output 0",
            tried,
            window,
        )
    ]
    return [*rows, _latched(ctx, channel)]


def _latched(ctx: Context, channel: int) -> Row:
    port, info = ctx.port, ctx.unit
    problems = []
    start = Start(
        session_id=port.new_session_id(),
        dwell_ms=info.dwell_max_ms,
        ramp_ms=long_plan(ctx).ramp_ms,
        watchdog_ms=info.watchdog_max_ms,
        channel_mask=1,
    )
    got = port.ask(start)
    if got is None or got.as_dict().get("error") != "FAULT_LATCHED":
        problems.append(f"START while latched: expected NACK FAULT_LATCHED, got {said(got)}")
        if got is not None and isinstance(got.message, Ack):
            port.ask(Stop(reason=StopReason.OPERATOR))
    port.ask(Stop(reason=StopReason.OPERATOR))
    status = port.status()
    if status is None or status.state != State.FAULT:
        problems.append(f"after a STOP: {describe_status(status)}, not FAULT")
    got = port.ask(ClearFault())
    status = port.status()
    if (
        got is None
        or not isinstance(got.message, Ack)
        or status is None
        or status.state != State.IDLE
    ):
        problems.append(f"CLEAR_FAULT got {said(got)}; then {describe_status(status)}")
    tried = ("START, STOP, then CLEAR_FAULT after FAULT(LEAD_OFF)",)
    if problems:
        return Row(*LATCHED_RULE, FAIL, "; ".join(problems), tried, "exact")
    return Row(
        *LATCHED_RULE,
        PASS,
        f"START refused FAULT_LATCHED, STOP left FAULT, CLEAR_FAULT: IDLE (channel {channel})",
        tried,
        "exact",
    )


CLAUSES = [
    Clause("open channel", _open_rules, _open_run, stimulating=True),
    Clause("lead-off", _lead_off_rules, _lead_off_run, stimulating=True),
]
