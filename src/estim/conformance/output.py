"""Clauses that drive current, run only on the operator's word that a test load (a
resistor), not a person, is on every channel: STOP (6.1, 8.4, 9), the watchdog
and what feeds it (9, 9.1), refusals while a fault is latched (5.3, 6.1), and the
shape and timing of a whole session (6.2, 7, 9) at the unit's smallest dwell.

Times are judged two ways. The unit's own clock (events' and STATUS's time_ms) is
held to the spec exactly, give or take the millisecond its numbers are rounded to.
The host's clock brackets what the unit cannot fake (a STOP can only take effect
between being sent and being answered) and, loosely, lateness: an answer or event
may reach the host up to ``Context.allowance_s`` later than the spec allows.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from estim.protocol import (
    Ack,
    AmplitudeReached,
    ClearFault,
    Completed,
    Event,
    Fault,
    FaultRaised,
    GetStatus,
    Heartbeat,
    Hello,
    Message,
    MessageType,
    RampDone,
    RampDownStarted,
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
from estim.protocol.fields import CodeU8

from .limits import Shape, channel_config, floor_step, session_shape
from .matching import describe
from .port import ANSWER_S, Received
from .sessions import Every, Live, begin, drive, ended, heartbeat, to_idle
from .suite import FAIL, PASS, SKIP, Clause, Context, Failed, Row

#: the unit's clock is read in whole milliseconds: two readings may differ by one
TICK_MS = 1
#: PROTOCOL.md 9: a device clock drifts less than 100 ppm
DRIFT = 100e-6

STOP_RULE = ("6.1, 9", "STOP turns output off at once: ACK IDLE, STOPPED with delivered_ms")
UNKNOWN_REASON_RULE = ("8.4", "a STOP with an unknown reason byte stops; STOPPED echoes it")
WATCHDOG_RULE = ("9", "watchdog trips watchdog_ms after the last HEARTBEAT: FAULT, STOPPED")
LATCHED_RULE = ("5.3, 6.1", "with a fault latched: NACK FAULT_LATCHED, field NONE, channel 0")
LATCHED_ANSWERS_RULE = ("6.1", "with a fault latched: HELLO, STATUS, HEARTBEAT 0, STOP answered")
CLEAR_RULE = ("6.1", "CLEAR_FAULT returns FAULT to IDLE with nothing latched")
FEED_RULE = ("9.1", "nothing but a HEARTBEAT naming the live session feeds the watchdog")
RAMP_UP_RULE = ("7", "the start ramp rises linearly at amplitude/ramp, never faster")
SAME_INSTANT_RULE = ("6.2", "AMPLITUDE_REACHED before RAMP_DONE when both happen at once")
RAMP_DOWN_RULE = ("7", "the end ramp starts at deadline - ramp and falls linearly to 0")
COMPLETED_RULE = ("7, 9", "COMPLETED at the deadline: delivered_ms == dwell_ms, output 0")
ORDER_RULE = ("6.2", "a session's events come in the order of its transitions")


def _plan(ctx: Context) -> Shape:
    """The session every clause here runs: the unit's smallest dwell, a ramp of a
    quarter of it (or the unit's longest), and as much of 12 mA as the slew allows."""
    info = ctx.unit
    return session_shape(info, info.dwell_min_ms, ramp_ms=max(1, info.dwell_min_ms // 4))


def _long(ctx: Context) -> Shape:
    """The same ramp and amplitude for a session that ends before its dwell."""
    shape = _plan(ctx)
    return Shape(shape.amplitude_ua, shape.ramp_ms, ctx.unit.dwell_max_ms)


def _ms(seconds: float) -> float:
    return seconds * 1000


def _said(got: Received | None) -> str:
    return describe(got.as_dict()) if got is not None else "nothing"


def _wait_for(ctx: Context, find: Callable[[], Received | None], seconds: float) -> Received | None:
    ctx.port.read(ctx.clock.now() + seconds, lambda: find() is not None)
    return find()


def _event(
    ctx: Context, live: Live, cls: type[Event], since: int | None = None
) -> Callable[[], Received | None]:
    def find() -> Received | None:
        for r in ctx.port.log[live.mark if since is None else since :]:
            if isinstance(r.message, cls) and r.message.session_id == live.session_id:
                return r
        return None

    return find


# --- STOP ------------------------------------------------------------------------------------


def _stop_rules(ctx: Context) -> list[tuple[str, str]]:
    return [STOP_RULE, UNKNOWN_REASON_RULE]


def _stop_run(ctx: Context) -> list[Row]:
    rows = [_stop_at_once(ctx)]
    to_idle(ctx, "the first STOP")
    return [*rows, _stop_unknown_reason(ctx)]


def _stop_at_once(ctx: Context) -> Row:
    port, clock = ctx.port, ctx.clock
    shape = _long(ctx)
    live = begin(ctx, shape, watchdog_ms=ctx.unit.watchdog_max_ms)
    beats: list[str] = []
    beat = min(0.1, ctx.unit.watchdog_max_ms / 4000)
    samples: list[Status] = []

    def on() -> bool:  # a quarter of the way up the ramp
        quarter = max(1, shape.amplitude_ua // 4)
        return any(s.channels and s.channels[0].amplitude_ua >= quarter for s in samples)

    def sample() -> None:
        status = port.status()
        if status is not None:
            samples.append(status)

    drive(
        ctx,
        until=lambda: on() or ended(ctx, live)() is not None,
        limit=live.ack_t + shape.ramp_ms / 1000 + max(0.2, 4 * ctx.allowance_s),
        every=[Every(beat, heartbeat(ctx, live, beats)), Every(0.02, sample)],
    )
    if ended(ctx, live)() is not None:
        return Row(
            *STOP_RULE, FAIL, f"the session ended before the STOP: {_said(ended(ctx, live)())}"
        )
    mark = len(port.log)
    sent_t = clock.now()
    stop = port.send(Stop(reason=StopReason.OPERATOR))
    stopped = _event(ctx, live, Stopped, mark)
    port.read(
        sent_t + ANSWER_S, lambda: port.answer(stop.seq, mark) is not None and stopped() is not None
    )
    answer = port.answer(stop.seq, mark)
    if answer is None or not isinstance(answer.message, Ack) or answer.message.state != State.IDLE:
        return Row(*STOP_RULE, FAIL, f"expected ACK(state=IDLE), got {_said(answer)}")
    event = stopped()
    if event is None:
        return Row(*STOP_RULE, FAIL, "ACK(state=IDLE), but no STOPPED followed")
    assert isinstance(event.message, Stopped)
    after = port.status()
    problems = []
    if event.message.reason != StopReason.OPERATOR:
        problems.append(
            f"STOPPED reason {CodeU8(StopReason).to_json(event.message.reason)}, not OPERATOR"
        )
    if port.log.index(event) < port.log.index(answer):
        problems.append("STOPPED came before the STOP's ACK (6.1: the response first)")
    low = max(0.0, _ms(sent_t - live.ack_t) * (1 - DRIFT) - TICK_MS)
    high = _ms(answer.t - live.sent_t) * (1 + DRIFT) + TICK_MS
    delivered = event.message.delivered_ms
    if not low <= delivered <= high:
        problems.append(
            f"delivered_ms {delivered}, but the STOP took effect between {low:.0f} and {high:.0f} ms"
        )
    if after is None or after.state != State.IDLE or any(c.amplitude_ua for c in after.channels):
        problems.append(f"STATUS after the STOP: {describe_status(after)}")
    if not on():
        problems.append("output never reached a quarter of its target before the STOP")
    problems += beats
    if problems:
        return Row(*STOP_RULE, FAIL, "; ".join(problems))
    level = samples[-1].channels[0].amplitude_ua
    return Row(
        *STOP_RULE,
        PASS,
        f"at {level} uA: ACK IDLE, STOPPED(OPERATOR, delivered_ms={delivered}) within "
        f"[{low:.0f}, {high:.0f}] ms, then STATUS IDLE at 0 uA",
    )


def describe_status(status: Status | None) -> str:
    if status is None:
        return "no answer"
    levels = ", ".join(str(c.amplitude_ua) for c in status.channels)
    return f"{status.state.name}, faults 0b{status.faults:b}, output [{levels}] uA"


def _stop_unknown_reason(ctx: Context) -> Row:
    port = ctx.port
    live = begin(ctx, _long(ctx), watchdog_ms=ctx.unit.watchdog_max_ms)
    mark = len(port.log)
    reason = 0x7F
    stop = port.send(Stop(reason=reason))
    stopped = _event(ctx, live, Stopped, mark)
    port.read(
        ctx.clock.now() + ANSWER_S,
        lambda: port.answer(stop.seq, mark) is not None and stopped() is not None,
    )
    answer, event = port.answer(stop.seq, mark), stopped()
    if answer is None or not isinstance(answer.message, Ack) or answer.message.state != State.IDLE:
        return Row(
            *UNKNOWN_REASON_RULE,
            FAIL,
            f"STOP(reason=127): expected ACK(state=IDLE), got {_said(answer)}",
        )
    if event is None or not isinstance(event.message, Stopped):
        return Row(*UNKNOWN_REASON_RULE, FAIL, "ACK(state=IDLE), but no STOPPED followed")
    if event.message.reason != reason:
        return Row(*UNKNOWN_REASON_RULE, FAIL, f"expected STOPPED(reason=127), got {_said(event)}")
    return Row(*UNKNOWN_REASON_RULE, PASS, "STOP(reason=127): ACK IDLE, STOPPED(reason=127)")


# --- the watchdog, and a latched fault ------------------------------------------------------


def _watchdog_rules(ctx: Context) -> list[tuple[str, str]]:
    return [WATCHDOG_RULE, LATCHED_RULE, LATCHED_ANSWERS_RULE, CLEAR_RULE]


def _watchdog_run(ctx: Context) -> list[Row]:
    for _ in range(3):  # a try spoilt by the host's own stall does not count
        trip = _trip(ctx)
        if not trip.host_stalled:
            break
        to_idle(ctx, "a watchdog try the host spoilt")
    if trip.host_stalled:
        why = f"the host could not send HEARTBEATs in time: {trip.problem}"
        return [Row(*r, SKIP, why) for r in _watchdog_rules(ctx)]
    if trip.problem is not None:
        rows = [Row(*WATCHDOG_RULE, FAIL, trip.problem)]
    else:
        rows = [Row(*WATCHDOG_RULE, PASS, trip.seen)]
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
    #: the host let a gap of 3/4 of the watchdog pass between HEARTBEATs: an early
    #: trip is then the host's doing, not the unit's
    host_stalled: bool = False


def _trip(ctx: Context) -> _Trip:
    port, clock, info = ctx.port, ctx.clock, ctx.unit
    watchdog = info.watchdog_min_ms
    live = begin(ctx, _long(ctx), watchdog_ms=watchdog)
    fault = _event(ctx, live, FaultRaised)
    beats: list[str] = []
    period = watchdog / 4000
    sent = [live.ack_t]
    beat = heartbeat(ctx, live, beats)

    def timed_beat() -> None:
        sent.append(clock.now())
        beat()

    drive(
        ctx,
        until=lambda: fault() is not None,
        limit=live.ack_t + 3 * watchdog / 1000,
        every=[Every(period, timed_beat, live.ack_t + period)],
    )
    trip = _Trip(live)
    if fault() is not None:
        at = fault()
        assert at is not None
        trip.fault = at
        gaps = [b - a for a, b in itertools.pairwise([*sent, at.t])]
        trip.host_stalled = max(gaps) >= 0.75 * watchdog / 1000
        trip.problem = (
            f"tripped {_ms(at.t - live.ack_t):.0f} ms after START while HEARTBEATs naming the "
            f"session went every {watchdog / 4:g} ms (watchdog {watchdog} ms)"
        )
        return trip
    # the last HEARTBEAT, then a STATUS to read the unit's clock right after it
    hb_sent = clock.now()
    got = port.ask(Heartbeat(session_id=live.session_id))
    status = port.ask(GetStatus())
    if got is None or not isinstance(got.message, Ack) or status is None:
        trip.problem = f"the last HEARTBEAT got {_said(got)}; its STATUS {_said(status)}"
        return trip
    assert isinstance(status.message, Status)
    at = _wait_for(ctx, fault, watchdog / 1000 + max(0.2, 4 * ctx.allowance_s))
    if at is None:
        trip.problem = (
            f"no FAULT within {watchdog} ms + {max(0.2, 4 * ctx.allowance_s) * 1000:.0f} ms "
            f"of the last HEARTBEAT (watchdog {watchdog} ms)"
        )
        return trip
    trip.fault = at
    assert isinstance(at.message, FaultRaised)
    problems = []
    if at.message.fault != Fault.WATCHDOG or at.message.channel != 0:
        problems.append(f"expected FAULT(fault=WATCHDOG, channel=0), got {_said(at)}")
    # the unit's clock: the trip is watchdog_ms after the HEARTBEAT arrived, which was
    # at most the host's round trip before the STATUS read its clock
    gap = _ms(status.t - hb_sent)
    since = (at.message.time_ms - status.message.time_ms) & 0xFFFFFFFF
    if not watchdog - gap - TICK_MS <= since <= watchdog + TICK_MS:
        problems.append(
            f"FAULT.time_ms is {since} ms after the STATUS that followed the last HEARTBEAT "
            f"(within {gap:.1f} ms of it); expected {watchdog} ms"
        )
    # the host's clock: not before watchdog_ms after sending it, not long after
    late = _ms(at.t - got.t) - watchdog
    if _ms(at.t - hb_sent) < watchdog * (1 - DRIFT) - TICK_MS:
        problems.append(f"FAULT reached the host {_ms(at.t - hb_sent):.1f} ms after the HEARTBEAT")
    elif late > ctx.allowance_s * 1000 + TICK_MS:
        problems.append(f"FAULT reached the host {late:.0f} ms later than watchdog_ms allows")
    stopped = _wait_for(ctx, _event(ctx, live, Stopped), ANSWER_S)  # may come apart
    if stopped is None or not isinstance(stopped.message, Stopped):
        problems.append("no STOPPED after the FAULT")
    else:
        if stopped.message.reason != StopReason.FAULT:
            problems.append(f"expected STOPPED(reason=FAULT), got {_said(stopped)}")
        if port.log.index(stopped) < port.log.index(at):
            problems.append("STOPPED came before FAULT (6.2: FAULT(WATCHDOG), STOPPED(FAULT))")
        delivered = stopped.message.delivered_ms
        expected = (at.message.time_ms - live.t0_ms) & 0xFFFFFFFF
        if abs(delivered - expected) > TICK_MS:
            problems.append(
                f"STOPPED.delivered_ms {delivered}, FAULT came {expected} ms after start"
            )
    status_after = port.status()
    if (
        status_after is None
        or status_after.state != State.FAULT
        or not status_after.faults & (1 << (Fault.WATCHDOG - 1))
        or any(c.amplitude_ua for c in status_after.channels)
    ):
        problems.append(f"STATUS after the trip: {describe_status(status_after)}")
    problems += beats
    if problems:
        trip.problem = "; ".join(problems)
    else:
        trip.seen = (
            f"watchdog {watchdog} ms: FAULT(WATCHDOG) {since} ms (unit's clock) after the last "
            f"HEARTBEAT's STATUS, at the host {late + watchdog:.0f} ms after its ACK; STOPPED(FAULT); "
            "state FAULT, output 0"
        )
    return trip


def _latched(ctx: Context, live: Live) -> list[Row]:
    port, info = ctx.port, ctx.unit
    refused: list[tuple[str, Message]] = [
        ("CONFIGURE_CHANNEL", channel_config(info, 1, ctx.targets.get(1, _plan(ctx).amplitude_ua))),
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
        problems.append(f"they caused {', '.join(_said(r) for r in events)}")
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
        rows.append(Row(*CLEAR_RULE, FAIL, f"expected {describe(want)}, got {_said(got)}"))
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
    target = ctx.targets.get(1, _plan(ctx).amplitude_ua)
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
    margin = max(0.2, 4 * ctx.allowance_s)
    fed: list[str] = []
    for name in FEEDERS:
        live = begin(ctx, _long(ctx), watchdog_ms=watchdog)
        try:
            fault = _event(ctx, live, FaultRaised)
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
    if fed:
        return [Row(*FEED_RULE, FAIL, f"{'; '.join(fed)} ({sent})")]
    return [
        Row(
            *FEED_RULE,
            PASS,
            f"tripped at {watchdog} ms despite each of {len(FEEDERS)}: {', '.join(FEEDERS)}",
        )
    ]


# --- a whole session ----------------------------------------------------------------------------


def _session_rules(ctx: Context) -> list[tuple[str, str]]:
    return [RAMP_UP_RULE, SAME_INSTANT_RULE, RAMP_DOWN_RULE, COMPLETED_RULE, ORDER_RULE]


@dataclass
class _Run:
    live: Live
    shape: Shape
    half: int
    samples: list[tuple[float, Status]] = field(default_factory=list)
    beats: list[str] = field(default_factory=list)
    #: host times the two SET_AMPLITUDEs were sent and answered
    lower: tuple[float, float] | None = None
    raised: tuple[float, float] | None = None
    problems: list[str] = field(default_factory=list)


def _session_run(ctx: Context) -> list[Row]:
    run = _whole_session(ctx)
    return [
        _ramp_up(ctx, run),
        _same_instant(ctx, run),
        _ramp_down(ctx, run),
        _completed(ctx, run),
        _order(ctx, run),
    ]


def _whole_session(ctx: Context) -> _Run:
    """A session at the unit's smallest dwell. A quarter into the ramp the amplitude
    is halved: the channel reaches the half before the ramp would have reached the
    target, so AMPLITUDE_REACHED and RAMP_DONE come at one instant. Then it is
    raised back, so the end ramp starts at the planned amplitude."""
    port, clock, info = ctx.port, ctx.clock, ctx.unit
    shape = _plan(ctx)
    half = floor_step(info, shape.amplitude_ua // 2)
    if half < info.amplitude_step_ua:
        raise Failed(f"the unit's slew allows only {shape.amplitude_ua} uA in this dwell")
    live = begin(ctx, shape, watchdog_ms=info.watchdog_max_ms)
    run = _Run(live, shape, half)
    done = ended(ctx, live)
    ramp_done = _event(ctx, live, RampDone)

    def sample() -> None:
        got = port.ask(GetStatus())
        if got is not None and isinstance(got.message, Status):
            run.samples.append((got.t, got.message))

    def act() -> None:
        now = clock.now()
        if run.lower is None and now >= live.ack_t + shape.ramp_ms / 4000:
            run.lower = _set(ctx, run, half, "RAMPING_UP")
        elif run.lower is not None and run.raised is None and ramp_done() is not None:
            run.raised = _set(ctx, run, shape.amplitude_ua, "RUNNING")

    beat = min(0.1, info.watchdog_max_ms / 4000)
    step = max(0.005, shape.ramp_ms / 20_000)
    drive(
        ctx,
        until=lambda: done() is not None,
        limit=live.ack_t + shape.dwell_ms / 1000 + max(1.0, 10 * ctx.allowance_s),
        every=[
            Every(beat, heartbeat(ctx, live, run.beats), live.ack_t + beat),
            Every(step, sample, live.ack_t),
            Every(step, act, live.ack_t),
        ],
    )
    sample()  # after the end
    return run


def _set(ctx: Context, run: _Run, amplitude: int, state: str) -> tuple[float, float]:
    sent = ctx.clock.now()
    got = ctx.port.ask(
        SetAmplitude(session_id=run.live.session_id, channel=1, amplitude_ua=amplitude)
    )
    if got is None or not isinstance(got.message, Ack):
        run.problems.append(f"SET_AMPLITUDE {amplitude} uA got {_said(got)}")
        return sent, sent
    return sent, got.t


def _rel(run: _Run, time_ms: int) -> int:
    """A time of the unit's clock, in ms from START's acceptance."""
    return (time_ms - run.live.t0_ms) & 0xFFFFFFFF


def _ramp_up(ctx: Context, run: _Run) -> Row:
    """Samples taken before the amplitude changed: out = k x t, give or take one
    step and a tick of the clock."""
    k = run.shape.slope
    tolerance = ctx.unit.amplitude_step_ua + k * TICK_MS
    cutoff = run.lower[0] if run.lower else float("inf")
    checked, problems = 0, []
    for t, status in run.samples:
        if t > cutoff or status.state != State.RAMPING_UP or not status.channels:
            continue
        at = _rel(run, status.time_ms)
        want = min(run.shape.amplitude_ua, k * at)
        got = status.channels[0].amplitude_ua
        checked += 1
        if abs(got - want) > tolerance:
            problems.append(f"{got} uA at {at} ms, expected {want:.0f} (slope {k:g} uA/ms)")
    if problems:
        return Row(
            *RAMP_UP_RULE,
            FAIL,
            "; ".join(problems[:2])
            + (f"; and {len(problems) - 2} more" if len(problems) > 2 else ""),
        )
    if not checked:
        return Row(*RAMP_UP_RULE, FAIL, "no STATUS sampled during the start ramp")
    return Row(*RAMP_UP_RULE, PASS, f"{checked} samples within one step of {k:g} uA/ms x time")


def _same_instant(ctx: Context, run: _Run) -> Row:
    if run.lower is None:
        return Row(*SAME_INSTANT_RULE, FAIL, "the session ended before the amplitude change")
    reached = _event(ctx, run.live, AmplitudeReached)()
    done = _event(ctx, run.live, RampDone)()
    if reached is None or done is None:
        return Row(
            *SAME_INSTANT_RULE,
            FAIL,
            f"expected AMPLITUDE_REACHED and RAMP_DONE, got {_said(reached)}, {_said(done)}",
        )
    assert isinstance(reached.message, AmplitudeReached)
    assert isinstance(done.message, RampDone)
    problems = list(run.problems)
    if (reached.message.channel, reached.message.amplitude_ua) != (1, run.half):
        problems.append(
            f"expected AMPLITUDE_REACHED(channel=1, amplitude_ua={run.half}), got {_said(reached)}"
        )
    if ctx.port.log.index(reached) > ctx.port.log.index(done):
        problems.append("RAMP_DONE came before AMPLITUDE_REACHED")
    if reached.message.time_ms != done.message.time_ms:
        problems.append(
            f"AMPLITUDE_REACHED at {_rel(run, reached.message.time_ms)} ms, RAMP_DONE at {_rel(run, done.message.time_ms)} ms"
        )
    expected = run.half / run.shape.slope
    at = _rel(run, done.message.time_ms)
    # the change surely arrived before the half was reached if it was answered before
    if _ms(run.lower[1] - run.live.sent_t) < expected and abs(at - expected) > TICK_MS:
        problems.append(
            f"RAMP_DONE {at} ms after start; {run.half} uA at {run.shape.slope:g} uA/ms takes {expected:.0f}"
        )
    if problems:
        return Row(*SAME_INSTANT_RULE, FAIL, "; ".join(problems))
    return Row(
        *SAME_INSTANT_RULE,
        PASS,
        f"halved to {run.half} uA in the ramp: AMPLITUDE_REACHED, RAMP_DONE, both at {at} ms",
    )


def _ramp_down(ctx: Context, run: _Run) -> Row:
    down = _event(ctx, run.live, RampDownStarted)()
    if down is None or not isinstance(down.message, RampDownStarted):
        return Row(*RAMP_DOWN_RULE, FAIL, "no RAMP_DOWN_STARTED")
    k, dwell = run.shape.slope, run.shape.dwell_ms
    level = run.shape.amplitude_ua if run.raised is not None else run.half
    remaining = level / k
    starts = _rel(run, down.message.time_ms)
    problems = []
    if (
        abs(down.message.remaining_ms - remaining) > TICK_MS
        or abs(starts - (dwell - remaining)) > TICK_MS
    ):
        problems.append(
            f"RAMP_DOWN_STARTED at {starts} ms with remaining_ms {down.message.remaining_ms}; "
            f"expected {dwell - remaining:.0f} and {remaining:.0f} ({level} uA at {k:g} uA/ms)"
        )
    tolerance = ctx.unit.amplitude_step_ua + k * TICK_MS
    checked = 0
    for _, status in run.samples:
        if status.state != State.RAMPING_DOWN or not status.channels:
            continue
        at = _rel(run, status.time_ms)
        want = min(level, k * max(0, dwell - at))
        got = status.channels[0].amplitude_ua
        checked += 1
        if abs(got - want) > tolerance:
            problems.append(f"{got} uA at {at} ms, expected {want:.0f}")
    if not checked and remaining >= 50:
        problems.append("no STATUS sampled during the end ramp")
    if problems:
        return Row(*RAMP_DOWN_RULE, FAIL, "; ".join(problems[:3]))
    return Row(
        *RAMP_DOWN_RULE,
        PASS,
        f"from {level} uA at {starts} ms (remaining {down.message.remaining_ms} ms); {checked} samples on the line to 0 at {dwell} ms",
    )


def _completed(ctx: Context, run: _Run) -> Row:
    end = ended(ctx, run.live)()
    dwell = run.shape.dwell_ms
    if end is None:
        return Row(*COMPLETED_RULE, FAIL, f"no COMPLETED within {dwell} ms + 1 s of START")
    if not isinstance(end.message, Completed):
        return Row(*COMPLETED_RULE, FAIL, f"expected COMPLETED, got {_said(end)}")
    problems = []
    at = _rel(run, end.message.time_ms)
    if end.message.delivered_ms != dwell or at != dwell:
        problems.append(
            f"COMPLETED at {at} ms with delivered_ms {end.message.delivered_ms}; expected {dwell} and {dwell}"
        )
    host = _ms(end.t - run.live.sent_t)
    if host < dwell * (1 - DRIFT) - TICK_MS:
        problems.append(f"COMPLETED reached the host {host:.0f} ms after START was sent: early")
    elif _ms(end.t - run.live.ack_t) > dwell * (1 + DRIFT) + ctx.allowance_s * 1000:
        problems.append(f"COMPLETED reached the host {host:.0f} ms after START: late")
    last = run.samples[-1][1] if run.samples else None
    if last is None or last.state != State.IDLE or any(c.amplitude_ua for c in last.channels):
        problems.append(f"STATUS after COMPLETED: {describe_status(last)}")
    problems += run.beats
    if problems:
        return Row(*COMPLETED_RULE, FAIL, "; ".join(problems))
    return Row(
        *COMPLETED_RULE,
        PASS,
        f"dwell {dwell} ms: COMPLETED at {at} ms, delivered_ms {dwell}; host saw it at {host:.0f} ms; then IDLE, 0 uA",
    )


def _order(ctx: Context, run: _Run) -> Row:
    names = [
        r.message.TYPE.name
        for r in ctx.port.log[run.live.mark :]
        if isinstance(r.message, Event) and r.message.session_id == run.live.session_id
    ]
    expected = ["OUTPUT_STARTED", "AMPLITUDE_REACHED", "RAMP_DONE"]
    if run.raised is not None:
        expected.append("AMPLITUDE_REACHED")
    expected += ["RAMP_DOWN_STARTED", "COMPLETED"]
    if names != expected:
        return Row(
            *ORDER_RULE,
            FAIL,
            f"expected {', '.join(expected)}; got {', '.join(names) or 'nothing'}",
        )
    return Row(*ORDER_RULE, PASS, ", ".join(names))


CLAUSES = [
    Clause("stop", _stop_rules, _stop_run, stimulating=True),
    Clause("watchdog", _watchdog_rules, _watchdog_run, stimulating=True),
    Clause("watchdog feeding", _feed_rules, _feed_run, stimulating=True),
    Clause("session", _session_rules, _session_run, stimulating=True),
]
