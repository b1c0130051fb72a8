"""The watchdog (9, 9.1): it trips watchdog_ms after the last HEARTBEAT naming the
live session, and nothing else feeds it; then a latched fault's refusals and
CLEAR_FAULT (5.3, 6.1). Drives current: run only on a confirmed test load."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from estim.protocol import (
    Ack,
    ClearFault,
    Event,
    Fault,
    FaultRaised,
    GetStatus,
    Heartbeat,
    Hello,
    Message,
    MessageType,
    SetAmplitude,
    Start,
    State,
    Status,
    Stop,
    Stopped,
    StopReason,
    cobs_encode,
    encode,
)

from .clause import FAIL, PASS, SKIP, TICK_MS, Clause, Context, Row
from .limits import channel_config
from .matching import describe
from .port import ANSWER_S, Bracket, Received
from .sessions import (
    Every,
    Live,
    begin,
    describe_status,
    drive,
    event_of,
    long_plan,
    plan,
    rel,
    said,
    to_idle,
    wait_for,
)

WATCHDOG_RULE = ("9", "watchdog trips watchdog_ms after the last HEARTBEAT: FAULT, STOPPED")
LATCHED_RULE = ("5.3, 6.1", "with a fault latched: NACK FAULT_LATCHED, field NONE, channel 0")
LATCHED_ANSWERS_RULE = ("6.1", "with a fault latched: HELLO, STATUS, HEARTBEAT 0, STOP answered")
CLEAR_RULE = ("6.1", "CLEAR_FAULT returns FAULT to IDLE with nothing latched")
FEED_RULE = ("9.1", "nothing but a HEARTBEAT naming the live session feeds the watchdog")


def _watchdog_rules(ctx: Context) -> list[tuple[str, str]]:
    return [WATCHDOG_RULE, LATCHED_RULE, LATCHED_ANSWERS_RULE, CLEAR_RULE]


def _watchdog_run(ctx: Context) -> list[Row]:
    trip = _trip(ctx)
    window = (
        "FAULT.time_ms - watchdog_ms between the STATUS just before and just after the "
        "last acknowledged HEARTBEAT (one write), +-1 ms; every STATUS after it FAULT"
    )
    tried = (
        f"watchdog_ms {ctx.unit.watchdog_min_ms}: HEARTBEATs every "
        f"{ctx.unit.watchdog_min_ms / 4:g} ms for {3 * ctx.unit.watchdog_min_ms} ms, then none",
    )
    if trip.problem is not None:
        rows = [Row(*WATCHDOG_RULE, FAIL, trip.problem, tried, window)]
    else:
        rows = [Row(*WATCHDOG_RULE, PASS, trip.seen, tried, window)]
    if trip.fault is None:
        why = "no fault to test: the watchdog did not trip"
        return [*rows, *(Row(*r, SKIP, why) for r in _watchdog_rules(ctx)[1:])]
    return rows + _latched(ctx, trip.live)


@dataclass
class _Trip:
    live: Live
    fault: Received | None = None
    problem: str | None = None
    seen: str = ""


def _trip(ctx: Context) -> _Trip:
    """HEARTBEATs every watchdog_ms / 4, each between two GET_STATUS in one write,
    for three watchdog periods, then none: FAULT(WATCHDOG) exactly watchdog_ms after
    the last one the unit acknowledged, by its own clock. A host stalled past the
    watchdog meanwhile spoils nothing: the unit must then trip watchdog_ms after the
    last HEARTBEAT before the stall, and is judged by that."""
    port, info = ctx.port, ctx.unit
    watchdog = info.watchdog_min_ms
    live = begin(ctx, long_plan(ctx), watchdog_ms=watchdog)
    fault = event_of(ctx, live, FaultRaised)
    beats: list[Bracket] = []
    period = watchdog / 4000
    trip = _Trip(live)

    def beat() -> None:
        beats.append(port.bracketed(Heartbeat(session_id=live.session_id)))

    drive(
        ctx,
        until=lambda: fault() is not None,
        limit=live.ack_t + 3 * watchdog / 1000,
        every=[Every(period, beat, live.ack_t + period)],
    )
    if fault() is None:
        beat()  # the last one
    fed = [b for b in beats if b.answer is not None and isinstance(b.answer.message, Ack)]
    polls: list[Status] = []

    def poll() -> None:  # GET_STATUS feeds nothing (9.1): the unit's state as time passes
        status = port.status()
        if status is not None:
            polls.append(status)

    drive(
        ctx,
        until=lambda: fault() is not None,
        limit=ctx.clock.now() + watchdog / 1000 + ctx.patience_s,
        every=[Every(period / 2, poll, ctx.clock.now() + period / 2)],
    )
    at = fault()
    if at is None:
        trip.problem = (
            f"no FAULT within {watchdog} ms + {ctx.patience_s * 1000:.0f} ms of the last "
            f"HEARTBEAT (watchdog {watchdog} ms)"
        )
        return trip
    trip.fault = at
    assert isinstance(at.message, FaultRaised)
    last = [b for b in fed if port.log.index(b.answer) < port.log.index(at)]  # type: ignore[arg-type]
    if last and last[-1].before is not None and last[-1].after is not None:
        low = rel(live, last[-1].before.time_ms) + watchdog
        high = rel(live, last[-1].after.time_ms) + watchdog
        fed_by = "the last acknowledged HEARTBEAT"
    else:
        low = high = watchdog  # START arms it (9.1)
        fed_by = "START (no HEARTBEAT acknowledged)"
    tripped = rel(live, at.message.time_ms)
    problems = []
    if at.message.fault != Fault.WATCHDOG or at.message.channel != 0:
        problems.append(f"expected FAULT(fault=WATCHDOG, channel=0), got {said(at)}")
    if not low - TICK_MS <= tripped <= high + TICK_MS:
        problems.append(
            f"FAULT at {tripped} ms after START (unit's clock); {fed_by} puts the expiry "
            f"between {low} and {high} ms"
        )
    early = [p for p in polls if rel(live, p.time_ms) + TICK_MS < low and p.state == State.FAULT]
    late = [p for p in polls if rel(live, p.time_ms) > high + TICK_MS and p.state != State.FAULT]
    for what, statuses in (("before", early), ("after", late)):
        if statuses:
            p = statuses[0]
            problems.append(
                f"STATUS at {rel(live, p.time_ms)} ms, {what} the expiry, says {describe_status(p)}"
            )
    stopped = wait_for(ctx, event_of(ctx, live, Stopped), ANSWER_S)  # may come apart
    if stopped is None or not isinstance(stopped.message, Stopped):
        problems.append("no STOPPED after the FAULT")
    else:
        if stopped.message.reason != StopReason.FAULT:
            problems.append(f"expected STOPPED(reason=FAULT), got {said(stopped)}")
        if port.log.index(stopped) < port.log.index(at):
            problems.append("STOPPED came before FAULT (6.2: FAULT(WATCHDOG), STOPPED(FAULT))")
        delivered = stopped.message.delivered_ms
        if abs(delivered - tripped) > TICK_MS:
            problems.append(
                f"STOPPED.delivered_ms {delivered}, FAULT came {tripped} ms after start"
            )
    status_after = port.status()
    if (
        status_after is None
        or status_after.state != State.FAULT
        or not status_after.faults & (1 << (Fault.WATCHDOG - 1))
        or any(c.amplitude_ua for c in status_after.channels)
    ):
        problems.append(f"STATUS after the trip: {describe_status(status_after)}")
    # a HEARTBEAT refused before the trip is wrong; one that crossed it is not
    refused = [
        b
        for b in beats
        if b not in fed and (b.answer is None or port.log.index(b.answer) < port.log.index(at))
    ]
    problems += [f"HEARTBEAT got {said(b.answer)}" for b in refused][:1]
    if problems:
        trip.problem = "; ".join(problems)
    else:
        trip.seen = (
            f"watchdog {watchdog} ms: FAULT(WATCHDOG) at {tripped} ms, {fed_by} putting the "
            f"expiry at {low}-{high} ms (unit's clock); STOPPED(FAULT); {len(polls)} STATUS "
            "polls agree; state FAULT, output 0"
        )
    return trip


def _latched(ctx: Context, live: Live) -> list[Row]:
    port, info = ctx.port, ctx.unit
    refused: list[tuple[str, Message]] = [
        ("CONFIGURE_CHANNEL", channel_config(info, 1, ctx.targets.get(1, plan(ctx).amplitude_ua))),
        (
            "START",
            Start(
                session_id=port.new_session_id(),
                dwell_ms=live.start.dwell_ms,
                ramp_ms=live.start.ramp_ms,
                watchdog_ms=live.start.watchdog_ms,
                channel_mask=1,
            ),
        ),
        (
            "SET_AMPLITUDE",
            SetAmplitude(
                session_id=live.session_id, channel=1, amplitude_ua=info.amplitude_step_ua
            ),
        ),
        ("HEARTBEAT naming the faulted session", Heartbeat(session_id=live.session_id)),
    ]
    problems = []
    for label, message in refused:
        got = port.ask(message)
        want = {
            "type": "NACK",
            "error": "FAULT_LATCHED",
            "field": "NONE",
            "channel": 0,
            "state": "FAULT",
        }
        if got is None or {k: got.as_dict().get(k) for k in want} != want:
            problems.append(
                f"{label}: expected {describe(want)}, got {describe(got.as_dict() if got else None, want)}"
            )
    if got_event := _stray(ctx, live):
        problems.append(got_event)
    rows = [
        Row(*LATCHED_RULE, FAIL, "; ".join(problems))
        if problems
        else Row(
            *LATCHED_RULE,
            PASS,
            "CONFIGURE_CHANNEL, START, SET_AMPLITUDE, HEARTBEAT(session): NACK FAULT_LATCHED, NONE, 0",
        )
    ]
    answered: list[tuple[str, Message, dict[str, object]]] = [
        ("HELLO", Hello(min_version=1, max_version=1), {"type": "DEVICE_INFO"}),
        ("GET_STATUS", GetStatus(), {"type": "STATUS", "state": "FAULT"}),
        ("HEARTBEAT 0", Heartbeat(session_id=0), {"type": "ACK", "state": "FAULT"}),
        ("STOP", Stop(reason=StopReason.OPERATOR), {"type": "ACK", "state": "FAULT"}),
    ]
    problems = []
    mark = len(port.log)
    for label, message, want in answered:
        got = port.ask(message)
        if got is None or {k: got.as_dict().get(k) for k in want} != want:
            problems.append(
                f"{label}: expected {describe(dict(want))}, got {describe(got.as_dict() if got else None, dict(want))}"
            )
    status = port.status()
    if status is None or status.state != State.FAULT or not status.faults:
        problems.append(f"after them STATUS is {describe_status(status)}, not FAULT")
    events = [r for r in port.log[mark:] if isinstance(r.message, Event)]
    if events:
        problems.append(f"they caused {', '.join(said(r) for r in events)}")
    rows.append(
        Row(*LATCHED_ANSWERS_RULE, FAIL, "; ".join(problems))
        if problems
        else Row(
            *LATCHED_ANSWERS_RULE,
            PASS,
            "DEVICE_INFO; STATUS FAULT; ACK FAULT; STOP: ACK FAULT, no STOPPED; still FAULT",
        )
    )
    got = port.ask(ClearFault())
    status = port.status()
    want = {"type": "ACK", "request_type": "CLEAR_FAULT", "state": "IDLE"}
    if got is None or {k: got.as_dict().get(k) for k in want} != want:
        rows.append(Row(*CLEAR_RULE, FAIL, f"expected {describe(want)}, got {said(got)}"))
    elif status is None or status.state != State.IDLE or status.faults or status.fault_channel:
        rows.append(Row(*CLEAR_RULE, FAIL, f"STATUS after CLEAR_FAULT: {describe_status(status)}"))
    else:
        rows.append(Row(*CLEAR_RULE, PASS, "ACK IDLE; STATUS IDLE, faults 0, fault_channel 0"))
    return rows


def _stray(ctx: Context, live: Live) -> str | None:
    """A second STOPPED for a session that already stopped (6.2: no second STOPPED)."""
    stops = [r for r in ctx.port.log[live.mark :] if isinstance(r.message, Stopped)]
    if len(stops) > 1:
        return f"{len(stops)} STOPPED events for one session"
    return None


# --- what feeds the watchdog (9.1) ----------------------------------------------------------


#: what must not feed the watchdog (9.1), each sent every watchdog_ms / 4 in a session
FEEDERS = (
    "GET_STATUS",
    "SET_AMPLITUDE",
    "HEARTBEAT 0",
    "a HEARTBEAT naming another session",
    "HELLO",
    "CLEAR_FAULT",
    "CONFIGURE_CHANNEL (refused)",
    "a copy of its START",
    "its HEARTBEAT with a bad CRC",
    "its HEARTBEAT with flags 1 (refused)",
)


def _feeder(ctx: Context, live: Live, name: str) -> Callable[[], None]:
    """An action that sends one more of ``name`` (see FEEDERS) in session ``live``."""
    port, info = ctx.port, ctx.unit
    sid = live.session_id
    target = ctx.targets.get(1, plan(ctx).amplitude_ua)
    makers: dict[str, Callable[[], Message]] = {
        "GET_STATUS": GetStatus,
        "SET_AMPLITUDE": lambda: SetAmplitude(session_id=sid, channel=1, amplitude_ua=target),
        "HEARTBEAT 0": lambda: Heartbeat(session_id=0),
        "a HEARTBEAT naming another session": lambda: Heartbeat(session_id=sid ^ 0x5A5A5A5A),
        "HELLO": lambda: Hello(min_version=1, max_version=1),
        "CLEAR_FAULT": ClearFault,
        "CONFIGURE_CHANNEL (refused)": lambda: channel_config(info, 1, target),
    }
    if name in makers:
        make = makers[name]
        return lambda: _ignore(port.ask(make()))

    def raw() -> bytes:
        if name == "a copy of its START":
            return encode(live.start)
        body = struct.pack("<BBHBBH", 1, 1, port.next_seq(), MessageType.HEARTBEAT, 0, 4)
        body += struct.pack("<I", sid)
        crc = zlib.crc32(body)
        if name == "its HEARTBEAT with a bad CRC":
            crc ^= 1
        else:  # flags 1: the CRC is good, so the unit NACKs it BAD_FLAGS
            body = body[:5] + b"\x01" + body[6:]
            crc = zlib.crc32(body)
        return cobs_encode(body + struct.pack("<I", crc)) + b"\x00"

    def write() -> None:
        port.write(raw())
        port.read(ctx.clock.now())

    return write


def _ignore(_: object) -> None:
    """What the feeder's answer says is not what this clause judges."""


def _feed_rules(ctx: Context) -> list[tuple[str, str]]:
    return [FEED_RULE]


def _feed_run(ctx: Context) -> list[Row]:
    watchdog = ctx.unit.watchdog_min_ms
    period = watchdog / 4000
    margin = ctx.patience_s
    fed: list[str] = []
    for name in FEEDERS:
        live = begin(ctx, long_plan(ctx), watchdog_ms=watchdog)
        try:
            fault = event_of(ctx, live, FaultRaised)
            drive(
                ctx,
                until=lambda: fault() is not None,  # noqa: B023 (used in this iteration only)
                limit=live.ack_t + watchdog / 1000 + margin,
                every=[Every(period, _feeder(ctx, live, name), live.ack_t + period)],
            )
            at = fault()
            if at is None:
                fed.append(f"{name} fed it: no trip {watchdog + margin * 1000:.0f} ms after START")
                continue
            assert isinstance(at.message, FaultRaised)
            after = (at.message.time_ms - live.t0_ms) & 0xFFFFFFFF
            if abs(after - watchdog) > TICK_MS:
                fed.append(f"{name}: tripped {after} ms after START (unit's clock), not {watchdog}")
        finally:
            to_idle(ctx, f"the watchdog session fed {name}")
    sent = f"watchdog {watchdog} ms, each sent every {watchdog / 4:g} ms"
    tried = tuple(f"{name} every {watchdog / 4:g} ms" for name in FEEDERS)
    window = f"FAULT.time_ms - OUTPUT_STARTED.time_ms = {watchdog} +-1 ms (START armed it)"
    if fed:
        return [Row(*FEED_RULE, FAIL, f"{'; '.join(fed)} ({sent})", tried, window)]
    return [
        Row(
            *FEED_RULE,
            PASS,
            f"tripped at {watchdog} ms despite each of {len(FEEDERS)}: {', '.join(FEEDERS)}",
            tried,
            window,
        )
    ]


CLAUSES = [
    Clause("watchdog", _watchdog_rules, _watchdog_run, stimulating=True),
    Clause("watchdog feeding", _feed_rules, _feed_run, stimulating=True),
]
