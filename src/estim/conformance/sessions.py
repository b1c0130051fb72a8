"""Running output on a unit for a clause: starting a session, keeping it going
(heartbeats, STATUS samples, scheduled actions) and bringing the unit back to IDLE."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from estim.protocol import (
    Ack,
    ClearFault,
    Completed,
    ErrorCode,
    Event,
    FaultRaised,
    Heartbeat,
    Message,
    Nack,
    OutputStarted,
    Start,
    State,
    Status,
    Stop,
    Stopped,
    StopReason,
    encode,
)

from .clause import Context, Failed
from .limits import Shape, channel_config, session_shape
from .matching import describe
from .port import ANSWER_S, Received


@dataclass
class Live:
    """A session the suite started: the START as sent, when, and its OUTPUT_STARTED."""

    start: Start
    #: clock time just before START was written, and when its ACK was complete
    sent_t: float
    ack_t: float
    started: Received
    #: index in the port's log where this session's frames begin
    mark: int
    #: the answers to the requests written with START (``begin(with_start=...)``)
    with_start: tuple[Received | None, ...] = ()

    @property
    def session_id(self) -> int:
        return self.start.session_id

    @property
    def t0_ms(self) -> int:
        """The unit's time of START's acceptance (OUTPUT_STARTED.time_ms)."""
        message = self.started.message
        assert isinstance(message, OutputStarted)
        return message.time_ms


def begin(
    ctx: Context,
    shape: Shape,
    *,
    watchdog_ms: int,
    dwell_ms: int | None = None,
    channels: tuple[int, ...] = (1,),
    with_start: tuple[Message, ...] = (),
) -> Live:
    """Configure ``channels`` at the shape's amplitude and start a session on them,
    writing ``with_start`` (each given the next seq; a session id of 0 is the new
    session's) in the same write as START; raises ``Failed`` if the unit refuses
    or says nothing of it."""
    port, info = ctx.port, ctx.unit
    ctx.stimulated = True
    for channel in channels:
        configure = channel_config(info, channel, shape.amplitude_ua)
        got = port.ask(configure)
        if got is None or not isinstance(got.message, Ack):
            raise Failed(f"channel {channel}: CONFIGURE_CHANNEL got {said(got)}")
        ctx.targets[channel] = shape.amplitude_ua
    start = Start(
        session_id=port.new_session_id(),
        dwell_ms=shape.dwell_ms if dwell_ms is None else dwell_ms,
        ramp_ms=shape.ramp_ms,
        watchdog_ms=watchdog_ms,
        channel_mask=sum(1 << (n - 1) for n in channels),
    )
    mark = len(port.log)
    sent_t = ctx.clock.now()
    start = replace(start, seq=port.next_seq())
    extra = tuple(
        replace(m, seq=port.next_seq(), **({"session_id": start.session_id} if _unnamed(m) else {}))
        for m in with_start
    )
    port.write(encode(start) + b"".join(encode(m) for m in extra))

    def started() -> Received | None:
        return next(
            (
                r
                for r in port.log[mark:]
                if isinstance(r.message, OutputStarted) and r.message.session_id == start.session_id
            ),
            None,
        )

    port.read(
        sent_t + ANSWER_S,
        lambda: (
            port.answer(start.seq, mark) is not None
            and bool(started())
            and all(port.answer(m.seq, mark) is not None for m in extra)
        ),
    )
    answer = port.answer(start.seq, mark)
    if answer is None or not isinstance(answer.message, Ack):
        raise Failed(
            f"START (dwell {start.dwell_ms} ms, ramp {start.ramp_ms} ms) got {said(answer)}"
        )
    event = started()
    if event is None:
        raise Failed("START was ACKed but no OUTPUT_STARTED followed")
    answers = tuple(port.answer(m.seq, mark) for m in extra)
    return Live(start, sent_t, answer.t, event, mark, answers)


def _unnamed(message: Message) -> bool:
    return getattr(message, "session_id", None) == 0


@dataclass
class Every:
    """An action repeated every ``period`` seconds of the clock, the first at ``first``."""

    period: float
    action: Callable[[], None]
    first: float = 0.0
    next: float = field(init=False)

    def __post_init__(self) -> None:
        self.next = self.first


def drive(ctx: Context, *, until: Callable[[], bool], limit: float, every: list[Every]) -> None:
    """Read the unit and run each ``Every`` on time until ``until()`` or clock ``limit``."""
    port, clock = ctx.port, ctx.clock
    while not until():
        now = clock.now()
        if now >= limit:
            return
        port.read(min([limit, *(e.next for e in every)]), until)
        if until():
            return
        now = clock.now()
        for e in every:
            if now >= e.next:
                e.action()
                e.next = max(e.next + e.period, now)  # a late tick does not bunch up the next
                if until():
                    return


def heartbeat(ctx: Context, live: Live, problems: list[str]) -> Callable[[], None]:
    """An action: a HEARTBEAT naming the session, whose answer must be an ACK (or
    NO_SESSION or FAULT_LATCHED, if the session has just ended on its own or by a
    fault: the two crossed)."""
    over = ended(ctx, live)

    def beat() -> None:
        got = ctx.port.ask(Heartbeat(session_id=live.session_id))
        if got is not None and isinstance(got.message, Ack):
            return
        if (
            got is not None
            and isinstance(got.message, Nack)
            and got.message.error in (ErrorCode.NO_SESSION, ErrorCode.FAULT_LATCHED)
        ):
            ctx.port.read(ctx.clock.now() + ANSWER_S, lambda: over() is not None)
            if over() is not None:
                return
        problems.append(f"HEARTBEAT got {said(got)}")

    return beat


def ended(ctx: Context, live: Live) -> Callable[[], Received | None]:
    """The event that ended the session (COMPLETED, STOPPED or FAULT), once it came."""

    def find() -> Received | None:
        for r in ctx.port.log[live.mark :]:
            m = r.message
            if isinstance(m, Completed | Stopped | FaultRaised) and m.session_id == live.session_id:
                return r
        return None

    return find


def to_idle(ctx: Context, label: str) -> None:
    """STOP, and CLEAR_FAULT if a fault is latched; the unit must then be IDLE with
    no fault and no output. A problem is kept for the clause that reports returns."""
    port = ctx.port
    ctx.returns += 1
    port.ask(Stop(reason=StopReason.OPERATOR))
    status = port.status()
    if status is not None and status.state == State.FAULT:
        port.ask(ClearFault())
        status = port.status()
    problem = idle_problem(status)
    if problem is not None:
        ctx.return_problems.append(f"after {label}: {problem}")


def idle_problem(status: Status | None) -> str | None:
    if status is None:
        return "no answer to GET_STATUS"
    output = [c.amplitude_ua for c in status.channels]
    if status.state != State.IDLE or status.faults or any(output):
        return f"state {status.state.name}, faults 0b{status.faults:b}, output {output} uA"
    return None


# --- shared by the clauses that drive current ------------------------------------------------

#: PROTOCOL.md 9: a device clock drifts less than 100 ppm
DRIFT = 100e-6


def find_free_ids(ctx: Context) -> str:
    """Set the port's session ids above every id the unit refuses as ended
    (PROTOCOL.md 10): from the STATUS.session_id it reports (its last session), up,
    by STARTs with channel_mask 0, which no unit can accept (the id is checked
    first: SESSION_ENDED if it is refused, else OUT_OF_RANGE CHANNEL_MASK).
    Halving the distance to 2^32 each time, 32 probes reach any floor. Returns
    what it found, for the report."""
    port, info = ctx.port, ctx.unit
    status = port.status()
    last = status.session_id if status is not None else 0
    candidate, probes = last + 1, 0
    while candidate <= 0xFFFFFFFF and probes < 33:
        probes += 1
        probe = Start(
            session_id=candidate,
            dwell_ms=info.dwell_min_ms,
            ramp_ms=0,
            watchdog_ms=info.watchdog_min_ms,
            channel_mask=0,
        )
        got = port.ask(probe)
        if got is not None and isinstance(got.message, Ack):  # a broken unit: stop it
            ctx.stimulated = True
            to_idle(ctx, "a START with channel_mask 0 that should have been refused")
        refused = (
            got is not None
            and isinstance(got.message, Nack)
            and got.message.error == ErrorCode.SESSION_ENDED
        )
        if not refused:
            break
        candidate += max(1, (0x100000000 - candidate) // 2)
    port.last_session_id = candidate - 1
    return f"session ids from {candidate} (last session {last}; {probes} probe(s))"


def plan(ctx: Context) -> Shape:
    """The session every clause here runs: the unit's smallest dwell, a ramp of a
    quarter of it (or the unit's longest), and as much of 12 mA as the slew allows."""
    info = ctx.unit
    return session_shape(info, info.dwell_min_ms, ramp_ms=max(1, info.dwell_min_ms // 4))


def long_plan(ctx: Context) -> Shape:
    """The same ramp and amplitude for a session that ends before its dwell."""
    shape = plan(ctx)
    return Shape(shape.amplitude_ua, shape.ramp_ms, ctx.unit.dwell_max_ms)


def ms(seconds: float) -> float:
    return seconds * 1000


def rel(live: Live, time_ms: int) -> int:
    """A time of the unit's clock, in ms from START's acceptance (it wraps at 2^32)."""
    return (time_ms - live.t0_ms) & 0xFFFFFFFF


def said(got: Received | None) -> str:
    return describe(got.as_dict()) if got is not None else "nothing"


def wait_for(ctx: Context, find: Callable[[], Received | None], seconds: float) -> Received | None:
    ctx.port.read(ctx.clock.now() + seconds, lambda: find() is not None)
    return find()


def event_of(
    ctx: Context, live: Live, cls: type[Event], since: int | None = None
) -> Callable[[], Received | None]:
    def find() -> Received | None:
        for r in ctx.port.log[live.mark if since is None else since :]:
            if isinstance(r.message, cls) and r.message.session_id == live.session_id:
                return r
        return None

    return find


def describe_status(status: Status | None) -> str:
    if status is None:
        return "no answer"
    levels = ", ".join(str(c.amplitude_ua) for c in status.channels)
    return f"{status.state.name}, faults 0b{status.faults:b}, output [{levels}] uA"
