"""A whole session at the unit's smallest dwell (6.2, 7, 9): the start ramp, the
order of events that happen at one instant, a change of amplitude slewed at the
session's rate, the end ramp reaching zero at the deadline, and COMPLETED's
delivered_ms. Every time judged is the unit's own time_ms against the model
instants of PROTOCOL.md 9.2, with one tick of the millisecond clock. Drives
current: run only on a confirmed test load."""

from __future__ import annotations

import itertools
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

from .clause import FAIL, PASS, TICK_MS, Clause, Context, Failed, Row
from .limits import Shape, floor_step
from .port import Bracket
from .sessions import (
    DRIFT,
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
    rel,
    said,
)

RAMP_UP_RULE = ("7", "the start ramp rises linearly at amplitude/ramp, never faster")
SAME_INSTANT_RULE = ("6.2", "AMPLITUDE_REACHED before RAMP_DONE when both happen at once")
SLEW_RULE = ("7, 9", "a SET_AMPLITUDE slews at amplitude/ramp (<= slew_max), never jumps")
RAMP_DOWN_RULE = ("7", "the end ramp starts at deadline - ramp and falls linearly to 0")
COMPLETED_RULE = ("7, 9", "COMPLETED at the deadline: delivered_ms == dwell_ms, output 0")
ORDER_RULE = ("6.2", "a session's events come in the order of its transitions")
CLOCK_RULE = ("9", "the unit's clock keeps time: its time_ms and the host's clock agree")
#: how far the host's own clock may be off: NTP slews a monotonic clock by at most 500 ppm
HOST_DRIFT = 500e-6


def _session_rules(ctx: Context) -> list[tuple[str, str]]:
    return [
        RAMP_UP_RULE,
        SAME_INSTANT_RULE,
        SLEW_RULE,
        RAMP_DOWN_RULE,
        COMPLETED_RULE,
        ORDER_RULE,
        CLOCK_RULE,
    ]


@dataclass
class _Run:
    live: Live
    shape: Shape
    half: int
    samples: list[Status] = field(default_factory=list)
    #: (host time the GET_STATUS was sent, host time its answer came, the answer)
    timed: list[tuple[float, float, Status]] = field(default_factory=list)
    beats: list[str] = field(default_factory=list)
    #: the SET_AMPLITUDE back to the target after RAMP_DONE, between two STATUS
    raised: Bracket | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def slope(self) -> float:
        return self.shape.slope


def _session_run(ctx: Context) -> list[Row]:
    run = _whole_session(ctx)
    return [
        _ramp_up(ctx, run),
        _same_instant(ctx, run),
        _slew(ctx, run),
        _ramp_down(ctx, run),
        _completed(ctx, run),
        _order(ctx, run),
        _clock(ctx, run),
    ]


def _whole_session(ctx: Context) -> _Run:
    """A session at the unit's smallest dwell. The amplitude is halved in the same
    write as START: the channel reaches the half before the ramp would have reached
    the target, so AMPLITUDE_REACHED and RAMP_DONE come at one instant, t0 + half / k.
    Once RAMP_DONE is in, it is raised back, so the end ramp starts at the planned
    amplitude, at deadline - ramp."""
    port, info = ctx.port, ctx.unit
    shape = plan(ctx)
    half = floor_step(info, shape.amplitude_ua // 2)
    if half < info.amplitude_step_ua:
        raise Failed(f"the unit's slew allows only {shape.amplitude_ua} uA in this dwell")
    live = begin(
        ctx,
        shape,
        watchdog_ms=info.watchdog_max_ms,
        with_start=(SetAmplitude(session_id=0, channel=1, amplitude_ua=half),),
    )
    run = _Run(live, shape, half)
    changed = live.with_start[0]
    if changed is None or not isinstance(changed.message, Ack):
        run.problems.append(f"SET_AMPLITUDE {half} uA sent with START got {said(changed)}")
    done = ended(ctx, live)
    ramp_done = event_of(ctx, live, RampDone)

    def sample() -> None:
        sent = ctx.clock.now()
        got = port.ask(GetStatus())
        if got is not None and isinstance(got.message, Status):
            run.samples.append(got.message)
            run.timed.append((sent, got.t, got.message))

    def act() -> None:
        if run.raised is None and ramp_done() is not None:
            run.raised = port.bracketed(
                SetAmplitude(session_id=live.session_id, channel=1, amplitude_ua=shape.amplitude_ua)
            )
            for status in (run.raised.before, run.raised.after):
                if status is not None:
                    run.samples.append(status)
            if run.raised.answer is None or not isinstance(run.raised.answer.message, Ack):
                run.problems.append(
                    f"SET_AMPLITUDE {shape.amplitude_ua} uA got {said(run.raised.answer)}"
                )

    beat = min(0.1, info.watchdog_max_ms / 4000)
    step = max(0.005, shape.ramp_ms / 20_000)
    drive(
        ctx,
        until=lambda: done() is not None,
        limit=live.ack_t + shape.dwell_ms / 1000 * (1 + DRIFT) + ctx.patience_s,
        every=[
            Every(beat, heartbeat(ctx, live, run.beats), live.ack_t + beat),
            Every(step, sample, live.ack_t),
            Every(step, act, live.ack_t),
        ],
    )
    sample()  # after the end
    return run


def _tolerance(ctx: Context, run: _Run) -> float:
    """How far a STATUS's amplitude may be from the model: one amplitude step (the
    unit may realise the line in steps) and one tick of its clock at the slope."""
    return ctx.unit.amplitude_step_ua + run.slope * TICK_MS


def _window(ctx: Context, run: _Run) -> str:
    return f"+-{_tolerance(ctx, run):g} uA (one step + {run.slope:g} uA/ms x 1 ms)"


def _ramp_up(ctx: Context, run: _Run) -> Row:
    """Samples in RAMPING_UP: out = k x t (the halved setpoint is reached at the same
    slope), give or take one step and a tick of the clock."""
    k = run.slope
    tolerance = _tolerance(ctx, run)
    checked, problems = 0, []
    for status in run.samples:
        if status.state != State.RAMPING_UP or not status.channels:
            continue
        at = rel(run.live, status.time_ms)
        want = min(run.half, k * at)
        got = status.channels[0].amplitude_ua
        checked += 1
        if abs(got - want) > tolerance:
            problems.append(f"{got} uA at {at} ms, expected {want:.0f} (slope {k:g} uA/ms)")
    tried = (f"target {run.shape.amplitude_ua} uA, ramp {run.shape.ramp_ms} ms",)
    if problems:
        more = f"; and {len(problems) - 2} more" if len(problems) > 2 else ""
        return Row(*RAMP_UP_RULE, FAIL, "; ".join(problems[:2]) + more, tried, _window(ctx, run))
    if not checked:
        return Row(*RAMP_UP_RULE, FAIL, "no STATUS sampled during the start ramp", tried)
    return Row(
        *RAMP_UP_RULE,
        PASS,
        f"{checked} samples within {tolerance:g} uA of {k:g} uA/ms x time",
        tried,
        _window(ctx, run),
    )


def _same_instant(ctx: Context, run: _Run) -> Row:
    reached = event_of(ctx, run.live, AmplitudeReached)()
    done = event_of(ctx, run.live, RampDone)()
    expected = run.half / run.slope
    tried = (f"SET_AMPLITUDE {run.half} uA with START (target {run.shape.amplitude_ua} uA)",)
    window = f"both at t0 + {expected:g} ms +-{TICK_MS} ms"
    if reached is None or done is None:
        return Row(
            *SAME_INSTANT_RULE,
            FAIL,
            f"expected AMPLITUDE_REACHED and RAMP_DONE, got {said(reached)}, {said(done)}",
            tried,
            window,
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
    at_reached, at_done = (
        rel(run.live, reached.message.time_ms),
        rel(run.live, done.message.time_ms),
    )
    for name, at in (("AMPLITUDE_REACHED", at_reached), ("RAMP_DONE", at_done)):
        if abs(at - expected) > TICK_MS:
            problems.append(
                f"{name} {at} ms after start; {run.half} uA at {run.slope:g} uA/ms takes {expected:g}"
            )
    if problems:
        return Row(*SAME_INSTANT_RULE, FAIL, "; ".join(problems), tried, window)
    return Row(
        *SAME_INSTANT_RULE,
        PASS,
        f"halved to {run.half} uA at START: AMPLITUDE_REACHED, RAMP_DONE, both at {at_done} ms",
        tried,
        window,
    )


def _slew(ctx: Context, run: _Run) -> Row:
    """The raise back to the target, sent between two STATUS: AMPLITUDE_REACHED
    (A - half) / k after it, and every pair of samples of the session no steeper
    than k (one step and a tick allowed), k itself within slew_max."""
    k, info = run.slope, ctx.unit
    span = (run.shape.amplitude_ua - run.half) / k
    tried = (f"SET_AMPLITUDE {run.half} -> {run.shape.amplitude_ua} uA after RAMP_DONE",)
    window = (
        f"AMPLITUDE_REACHED {span:g} ms after the STATUS before and after the change, "
        f"+-{TICK_MS} ms; between samples no faster than {k:g} uA/ms + one step"
    )
    problems = []
    if k * 1000 > info.slew_max_ua_per_s:
        problems.append(f"the session slews at {k * 1000:g} uA/s, above slew_max")
    raised = run.raised
    if raised is None or not raised.complete:
        problems.append("the session ended before the amplitude could be raised back")
    else:
        assert raised.before is not None
        assert raised.after is not None
        reached = [
            r
            for r in ctx.port.log[run.live.mark :]
            if isinstance(r.message, AmplitudeReached)
            and r.message.session_id == run.live.session_id
            and r.message.amplitude_ua == run.shape.amplitude_ua
        ]
        low = rel(run.live, raised.before.time_ms) + span
        high = rel(run.live, raised.after.time_ms) + span
        if not reached:
            problems.append(f"no AMPLITUDE_REACHED({run.shape.amplitude_ua} uA)")
        else:
            message = reached[0].message
            assert isinstance(message, AmplitudeReached)
            at = rel(run.live, message.time_ms)
            if not low - TICK_MS <= at <= high + TICK_MS:
                problems.append(
                    f"AMPLITUDE_REACHED({run.shape.amplitude_ua}) at {at} ms; the change arrived "
                    f"between {rel(run.live, raised.before.time_ms)} and "
                    f"{rel(run.live, raised.after.time_ms)} ms and takes {span:g} ms"
                )
    live_samples = sorted(
        (s for s in run.samples if s.state != State.IDLE and s.channels),
        key=lambda s: rel(run.live, s.time_ms),
    )
    steepest = 0.0
    for a, b in itertools.pairwise(live_samples):
        dt = rel(run.live, b.time_ms) - rel(run.live, a.time_ms)
        rise = abs(b.channels[0].amplitude_ua - a.channels[0].amplitude_ua)
        if rise > k * (dt + TICK_MS) + info.amplitude_step_ua:
            problems.append(
                f"{a.channels[0].amplitude_ua} uA at {rel(run.live, a.time_ms)} ms, then "
                f"{b.channels[0].amplitude_ua} uA at {rel(run.live, b.time_ms)} ms: faster "
                f"than {k:g} uA/ms"
            )
            break
        if dt > 0:
            steepest = max(steepest, rise / dt)
    if problems:
        return Row(*SLEW_RULE, FAIL, "; ".join(problems), tried, window)
    return Row(
        *SLEW_RULE,
        PASS,
        f"raised to {run.shape.amplitude_ua} uA, reached {span:g} ms later; "
        f"{len(live_samples)} samples, none steeper than {k:g} uA/ms + one step",
        tried,
        window,
    )


def _ramp_down(ctx: Context, run: _Run) -> Row:
    down = event_of(ctx, run.live, RampDownStarted)()
    k, dwell = run.slope, run.shape.dwell_ms
    level = run.shape.amplitude_ua if run.raised is not None else run.half
    remaining = level / k
    tried = (f"{level} uA at {k:g} uA/ms, dwell {dwell} ms",)
    window = (
        f"RAMP_DOWN_STARTED at t0 + {dwell - remaining:g} ms, remaining_ms {remaining:g}, "
        f"+-{TICK_MS} ms; samples {_window(ctx, run)}"
    )
    if down is None or not isinstance(down.message, RampDownStarted):
        return Row(*RAMP_DOWN_RULE, FAIL, "no RAMP_DOWN_STARTED", tried, window)
    starts = rel(run.live, down.message.time_ms)
    problems = []
    if (
        abs(down.message.remaining_ms - remaining) > TICK_MS
        or abs(starts - (dwell - remaining)) > TICK_MS
    ):
        problems.append(
            f"RAMP_DOWN_STARTED at {starts} ms with remaining_ms {down.message.remaining_ms}; "
            f"expected {dwell - remaining:g} and {remaining:g} ({level} uA at {k:g} uA/ms)"
        )
    tolerance = _tolerance(ctx, run)
    checked = 0
    for status in run.samples:
        if status.state != State.RAMPING_DOWN or not status.channels:
            continue
        at = rel(run.live, status.time_ms)
        want = min(level, k * max(0, dwell - at))
        got = status.channels[0].amplitude_ua
        checked += 1
        if abs(got - want) > tolerance:
            problems.append(f"{got} uA at {at} ms, expected {want:.0f}")
    if not checked and remaining >= 50:
        problems.append("no STATUS sampled during the end ramp")
    if problems:
        return Row(*RAMP_DOWN_RULE, FAIL, "; ".join(problems[:3]), tried, window)
    return Row(
        *RAMP_DOWN_RULE,
        PASS,
        f"from {level} uA at {starts} ms (remaining {down.message.remaining_ms} ms); "
        f"{checked} samples on the line to 0 at {dwell} ms",
        tried,
        window,
    )


def _completed(ctx: Context, run: _Run) -> Row:
    end = ended(ctx, run.live)()
    dwell = run.shape.dwell_ms
    tried = (f"dwell {dwell} ms",)
    window = (
        f"COMPLETED at t0 + {dwell} +-{TICK_MS} ms, delivered_ms exactly {dwell}; every "
        "STATUS IDLE from the deadline on and not before"
    )
    if end is None:
        return Row(
            *COMPLETED_RULE,
            FAIL,
            f"no COMPLETED within {dwell} ms + {ctx.patience_s:g} s of START",
            tried,
            window,
        )
    if not isinstance(end.message, Completed):
        return Row(*COMPLETED_RULE, FAIL, f"expected COMPLETED, got {said(end)}", tried, window)
    problems = []
    at = rel(run.live, end.message.time_ms)
    if end.message.delivered_ms != dwell or abs(at - dwell) > TICK_MS:
        problems.append(
            f"COMPLETED at {at} ms with delivered_ms {end.message.delivered_ms}; "
            f"expected {dwell} and {dwell}"
        )
    # the host's clock can only make an event late, never early: a COMPLETED reaching
    # the host before the dwell has passed on its clock means the unit's clock is fast
    host = ms(end.t - run.live.sent_t)
    if host < dwell * (1 - DRIFT) - TICK_MS:
        problems.append(f"COMPLETED reached the host {host:.0f} ms after START was sent: early")
    for status in run.samples:
        t = rel(run.live, status.time_ms)
        idle = status.state == State.IDLE
        if (t < dwell - TICK_MS and idle) or (t > dwell + TICK_MS and not idle):
            problems.append(f"STATUS at {t} ms (deadline {dwell} ms): {describe_status(status)}")
            break
    last = run.samples[-1] if run.samples else None
    if last is None or last.state != State.IDLE or any(c.amplitude_ua for c in last.channels):
        problems.append(f"STATUS after COMPLETED: {describe_status(last)}")
    problems += run.beats
    if problems:
        return Row(*COMPLETED_RULE, FAIL, "; ".join(problems), tried, window)
    return Row(
        *COMPLETED_RULE,
        PASS,
        f"dwell {dwell} ms: COMPLETED at {at} ms, delivered_ms {dwell}; then IDLE, 0 uA",
        tried,
        window,
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


def _clock(ctx: Context, run: _Run) -> Row:
    """The first and last STATUS of the session: the unit read its clock between
    sending and answering each, so the time between its two readings lies between
    (second sent - first answered) and (second answered - first sent) on the host's
    clock. Host delays only widen that bracket: they never fail a unit. A unit
    whose clock runs 1% slow (a 600 s dwell lasting 606 s) is outside it."""
    if len(run.timed) < 2:
        return Row(*CLOCK_RULE, FAIL, "fewer than two STATUS answers in the session")
    (s1, r1, first), (s2, r2, last) = run.timed[0], run.timed[-1]
    unit = (last.time_ms - first.time_ms) & 0xFFFFFFFF
    low, high = ms(s2 - r1), ms(r2 - s1)
    slack = DRIFT + HOST_DRIFT
    window = (
        f"unit's elapsed time within the host's bracket x (1 -+ {slack * 1e6:.0f} ppm: "
        f"100 for the unit, 500 for the host's clock) +-{TICK_MS} ms"
    )
    tried = (f"STATUS at the start and the end of the session, {low / 1000:.3f} s apart or more",)
    if not low * (1 - slack) - TICK_MS <= unit <= high * (1 + slack) + TICK_MS:
        why = (
            f"{unit} ms passed on the unit's clock while {low:.1f} to {high:.1f} ms passed on "
            f"the host's: {(unit / max((low + high) / 2, 1e-9) - 1) * 1e6:+.0f} ppm"
        )
        return Row(*CLOCK_RULE, FAIL, why, tried, window)
    return Row(
        *CLOCK_RULE,
        PASS,
        f"{unit} ms on the unit's clock, {low:.1f} to {high:.1f} ms on the host's",
        tried,
        window,
    )


CLAUSES = [Clause("session", _session_rules, _session_run, stimulating=True)]
