"""STOP while output is on (6.1, 8.4, 9): off at once, acknowledged, and STOPPED
with the time output was on, bracketed by when the STOP was sent and answered.
Drives current: run only on a confirmed test load."""

from __future__ import annotations

from estim.protocol import (
    Ack,
    State,
    Status,
    Stop,
    Stopped,
    StopReason,
)
from estim.protocol.fields import CodeU8

from .clause import FAIL, PASS, TICK_MS, Clause, Context, Row
from .port import ANSWER_S
from .sessions import (
    Every,
    begin,
    describe_status,
    drive,
    ended,
    event_of,
    heartbeat,
    long_plan,
    rel,
    said,
    to_idle,
)

STOP_RULE = ("6.1, 9", "STOP turns output off at once: ACK IDLE, STOPPED with delivered_ms")
UNKNOWN_REASON_RULE = ("8.4", "a STOP with an unknown reason byte stops; STOPPED echoes it")


def _stop_rules(ctx: Context) -> list[tuple[str, str]]:
    return [STOP_RULE, UNKNOWN_REASON_RULE]


def _stop_run(ctx: Context) -> list[Row]:
    rows = [_stop_at_once(ctx)]
    to_idle(ctx, "the first STOP")
    return [*rows, _stop_unknown_reason(ctx)]


def _stop_at_once(ctx: Context) -> Row:
    """A quarter up the ramp, STOP between two GET_STATUS in one write: STOPPED's
    time_ms lies between theirs (PROTOCOL.md 9.2), whatever the host's scheduling."""
    port = ctx.port
    shape = long_plan(ctx)
    live = begin(ctx, shape, watchdog_ms=ctx.unit.watchdog_max_ms)
    beats: list[str] = []
    beat = min(0.1, ctx.unit.watchdog_max_ms / 4000)
    samples: list[Status] = []
    quarter = max(1, shape.amplitude_ua // 4)
    window = "STOPPED.time_ms between the STATUS just before and just after the STOP, +-1 ms"
    tried = (f"STOP(OPERATOR) at {quarter} uA or more of {shape.amplitude_ua} uA",)

    def on() -> bool:
        return any(s.channels and s.channels[0].amplitude_ua >= quarter for s in samples)

    def sample() -> None:
        status = port.status()
        if status is not None:
            samples.append(status)

    drive(
        ctx,
        until=lambda: on() or ended(ctx, live)() is not None,
        limit=live.ack_t + shape.ramp_ms / 1000 + ctx.patience_s,
        every=[Every(beat, heartbeat(ctx, live, beats)), Every(0.02, sample)],
    )
    if ended(ctx, live)() is not None:
        return Row(
            *STOP_RULE, FAIL, f"the session ended before the STOP: {said(ended(ctx, live)())}"
        )
    mark = len(port.log)
    got = port.bracketed(Stop(reason=StopReason.OPERATOR))
    stopped = event_of(ctx, live, Stopped, mark)
    port.read(ctx.clock.now() + ctx.patience_s, lambda: stopped() is not None)
    answer, event = got.answer, stopped()
    if answer is None or not isinstance(answer.message, Ack) or answer.message.state != State.IDLE:
        return Row(*STOP_RULE, FAIL, f"expected ACK(state=IDLE), got {said(answer)}", tried)
    if event is None or not isinstance(event.message, Stopped):
        return Row(*STOP_RULE, FAIL, "ACK(state=IDLE), but no STOPPED followed", tried)
    if got.before is None or got.after is None:
        return Row(*STOP_RULE, FAIL, "no STATUS answered around the STOP", tried)
    problems = []
    if event.message.reason != StopReason.OPERATOR:
        problems.append(
            f"STOPPED reason {CodeU8(StopReason).to_json(event.message.reason)}, not OPERATOR"
        )
    if port.log.index(event) < port.log.index(answer):
        problems.append("STOPPED came before the STOP's ACK (6.1: the response first)")
    low, high = rel(live, got.before.time_ms), rel(live, got.after.time_ms)
    at = rel(live, event.message.time_ms)
    if not low - TICK_MS <= at <= high + TICK_MS:
        problems.append(f"STOPPED at {at} ms, but the STOP arrived between {low} and {high} ms")
    delivered = event.message.delivered_ms
    if abs(delivered - at) > TICK_MS:
        problems.append(f"delivered_ms {delivered}, but STOPPED came {at} ms after START")
    after = got.after
    if after.state != State.IDLE or any(c.amplitude_ua for c in after.channels):
        problems.append(f"STATUS right after the STOP: {describe_status(after)}")
    if not on():
        problems.append("output never reached a quarter of its target before the STOP")
    problems += beats
    if problems:
        return Row(*STOP_RULE, FAIL, "; ".join(problems), tried, window)
    level = samples[-1].channels[0].amplitude_ua
    return Row(
        *STOP_RULE,
        PASS,
        f"at {level} uA: ACK IDLE, STOPPED(OPERATOR) at {at} ms, delivered_ms={delivered}, "
        f"STOP arrived between {low} and {high} ms (unit's clock); then STATUS IDLE at 0 uA",
        tried,
        window,
    )


def _stop_unknown_reason(ctx: Context) -> Row:
    port = ctx.port
    live = begin(ctx, long_plan(ctx), watchdog_ms=ctx.unit.watchdog_max_ms)
    mark = len(port.log)
    reason = 0x7F
    stop = port.send(Stop(reason=reason))
    stopped = event_of(ctx, live, Stopped, mark)
    port.read(
        ctx.clock.now() + ANSWER_S,
        lambda: port.answer(stop.seq, mark) is not None and stopped() is not None,
    )
    answer, event = port.answer(stop.seq, mark), stopped()
    if answer is None or not isinstance(answer.message, Ack) or answer.message.state != State.IDLE:
        return Row(
            *UNKNOWN_REASON_RULE,
            FAIL,
            f"STOP(reason=127): expected ACK(state=IDLE), got {said(answer)}",
        )
    if event is None or not isinstance(event.message, Stopped):
        return Row(*UNKNOWN_REASON_RULE, FAIL, "ACK(state=IDLE), but no STOPPED followed")
    tried = ("STOP(reason=127), a reason byte section 8.4 does not define",)
    if event.message.reason != reason:
        return Row(
            *UNKNOWN_REASON_RULE,
            FAIL,
            f"expected STOPPED(reason=127), got {said(event)}",
            tried,
            "exact",
        )
    return Row(
        *UNKNOWN_REASON_RULE,
        PASS,
        "STOP(reason=127): ACK IDLE, STOPPED(reason=127)",
        tried,
        "exact",
    )


CLAUSES = [Clause("stop", _stop_rules, _stop_run, stimulating=True)]
