"""A whole session at the unit's smallest dwell (6.2, 7, 9): the start ramp, the
order of events that happen at one instant, the end ramp reaching zero at the
deadline, and COMPLETED's delivered_ms. Drives current: run only on a confirmed
test load."""

from __future__ import annotations

from dataclasses import dataclass, field

from estim.protocol import (
    Ack,
    AmplitudeReached,
    Completed,
    Event,
    GetStatus,
    RampDone,
    RampDownStarted,
    SetAmplitude,
    State,
    Status,
)

from .clause import FAIL, PASS, Clause, Context, Failed, Row
from .limits import Shape, floor_step
from .sessions import (
    DRIFT,
    TICK_MS,
    Every,
    Live,
    begin,
    describe_status,
    drive,
    ended,
    event_of,
    heartbeat,
    ms,
    plan,
    said,
)

RAMP_UP_RULE = ("7", "the start ramp rises linearly at amplitude/ramp, never faster")
SAME_INSTANT_RULE = ("6.2", "AMPLITUDE_REACHED before RAMP_DONE when both happen at once")
RAMP_DOWN_RULE = ("7", "the end ramp starts at deadline - ramp and falls linearly to 0")
COMPLETED_RULE = ("7, 9", "COMPLETED at the deadline: delivered_ms == dwell_ms, output 0")
ORDER_RULE = ("6.2", "a session's events come in the order of its transitions")


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
    shape = plan(ctx)
    half = floor_step(info, shape.amplitude_ua // 2)
    if half < info.amplitude_step_ua:
        raise Failed(f"the unit's slew allows only {shape.amplitude_ua} uA in this dwell")
    live = begin(ctx, shape, watchdog_ms=info.watchdog_max_ms)
    run = _Run(live, shape, half)
    done = ended(ctx, live)
    ramp_done = event_of(ctx, live, RampDone)

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
        run.problems.append(f"SET_AMPLITUDE {amplitude} uA got {said(got)}")
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
    reached = event_of(ctx, run.live, AmplitudeReached)()
    done = event_of(ctx, run.live, RampDone)()
    if reached is None or done is None:
        return Row(
            *SAME_INSTANT_RULE,
            FAIL,
            f"expected AMPLITUDE_REACHED and RAMP_DONE, got {said(reached)}, {said(done)}",
        )
    assert isinstance(reached.message, AmplitudeReached)
    assert isinstance(done.message, RampDone)
    problems = list(run.problems)
    if (reached.message.channel, reached.message.amplitude_ua) != (1, run.half):
        problems.append(
            f"expected AMPLITUDE_REACHED(channel=1, amplitude_ua={run.half}), got {said(reached)}"
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
    if ms(run.lower[1] - run.live.sent_t) < expected and abs(at - expected) > TICK_MS:
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
    down = event_of(ctx, run.live, RampDownStarted)()
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
        return Row(*COMPLETED_RULE, FAIL, f"expected COMPLETED, got {said(end)}")
    problems = []
    at = _rel(run, end.message.time_ms)
    if end.message.delivered_ms != dwell or at != dwell:
        problems.append(
            f"COMPLETED at {at} ms with delivered_ms {end.message.delivered_ms}; expected {dwell} and {dwell}"
        )
    host = ms(end.t - run.live.sent_t)
    if host < dwell * (1 - DRIFT) - TICK_MS:
        problems.append(f"COMPLETED reached the host {host:.0f} ms after START was sent: early")
    elif ms(end.t - run.live.ack_t) > dwell * (1 + DRIFT) + ctx.allowance_s * 1000:
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


CLAUSES = [Clause("session", _session_rules, _session_run, stimulating=True)]
