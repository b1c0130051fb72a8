"""Clauses on the byte stream (3.4, 9), the response time (9), and the rows judged
from the whole run: the event counter (10), the unit's own frames (1, 3), and its
return to IDLE after every clause that drove current."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable

from estim.protocol import (
    INTER_BYTE_GAP_S,
    Event,
    GetStatus,
    Heartbeat,
    Hello,
    Kind,
    Message,
    encode,
)

from .clause import FAIL, PASS, SKIP, Clause, Context, Row
from .matching import describe_all

GARBAGE_RULE = (
    "3.4",
    "garbage, overlong input and empty frames are dropped; the next frame counts",
)
BACK_TO_BACK_RULE = ("3.4, 10", "back-to-back frames in one write are each answered, in order")
GAP_RULE = ("3.4, 9", "a partial frame is dropped after 50 ms of silence")
SLOW_RULE = ("9", "a frame whose bytes arrive 10 ms apart is received whole")
RESPONSE_RULE = ("9", "answers within 5 ms + wire time (the fastest of 20 GET_STATUS)")
COUNTER_RULE = ("10", "events carry consecutive numbers (the device's event counter)")
FRAMES_RULE = ("1, 3", "the unit sends nothing but valid frames")
RETURN_RULE = ("6.1", "STOP and CLEAR_FAULT bring the unit back to IDLE after each clause")

#: how much later than 5 ms + wire time the median round trip may be before it fails:
#: the host's own latency (a USB-serial adapter, a busy machine)
HOST_LATENCY_S = 0.010
ROUND_TRIPS = 20


def _answers(ctx: Context, wire: bytes, sent: list[Message], label: str) -> str | None:
    """Write ``wire``; the unit must answer exactly the requests ``sent``, in order."""
    ex = ctx.port.exchange(wire, len(sent))
    got = [r.message for r in ex.frames]
    want = [(m.seq, m.TYPE.name) for m in sent]
    seen = [(m.seq, "response") for m in got if m.KIND == Kind.RESPONSE]
    if len(got) != len(sent) or [s for s, _ in seen] != [s for s, _ in want]:
        expected = ", ".join(f"an answer to {t} seq {s}" for s, t in want) or "nothing"
        return f"{label}: expected {expected}, got {describe_all(ex.dicts())}"
    if not ex.fenced:
        return f"{label}: no answer to the GET_STATUS after it"
    return None


def _garbage(ctx: Context) -> Row:
    rng = ctx.port.rng
    problems = []
    no_zero = bytes(rng.randrange(1, 256) for _ in range(200))
    with_zeros = bytes(rng.randrange(0, 256) for _ in range(300))
    for label, junk in (
        ("200 random bytes, then 0x00", no_zero + b"\x00"),
        ("300 random bytes with zeros, then 0x00", with_zeros + b"\x00"),
        ("600 bytes without a 0x00, then 0x00", bytes(range(1, 256)) * 2 + bytes(90) + b"\x00"),
        ("ten empty frames (0x00 0x00 ...)", b"\x00" * 10),
    ):
        m = GetStatus(seq=ctx.port.next_seq())
        problem = _answers(ctx, junk + encode(m), [m], label)
        if problem:
            problems.append(problem)
    if problems:
        return Row(*GARBAGE_RULE, FAIL, "; ".join(problems))
    return Row(*GARBAGE_RULE, PASS, "4 kinds of junk dropped; the GET_STATUS after each answered")


def _back_to_back(ctx: Context) -> Row:
    port = ctx.port
    sent: list[Message] = [
        Hello(seq=port.next_seq(), min_version=1, max_version=1),
        GetStatus(seq=port.next_seq()),
        Heartbeat(seq=port.next_seq(), session_id=0),
        GetStatus(seq=port.next_seq()),
    ]
    wire = b"\x00".join(encode(m) for m in sent)  # an empty frame between each, too
    problem = _answers(ctx, wire, sent, "4 requests in one write")
    if problem:
        return Row(*BACK_TO_BACK_RULE, FAIL, problem)
    return Row(
        *BACK_TO_BACK_RULE,
        PASS,
        "HELLO, GET_STATUS, HEARTBEAT, GET_STATUS in one write: 4 answers in order",
    )


def _gap(ctx: Context) -> Row:
    port = ctx.port
    partial = encode(GetStatus(seq=port.next_seq()))[:7]
    port.write(partial)
    mark = len(port.log)
    port.read(ctx.clock.now() + INTER_BYTE_GAP_S + 0.02)  # silence
    early = port.log[mark:]
    m = GetStatus(seq=port.next_seq())
    problem = _answers(ctx, encode(m), [m], "7 bytes of a frame, 70 ms of silence, a whole frame")
    if early:
        problem = f"answered a partial frame: {describe_all([r.as_dict() for r in early])}"
    if problem:
        return Row(*GAP_RULE, FAIL, problem + " (a partial frame must be dropped after 50 ms)")
    return Row(*GAP_RULE, PASS, "7 bytes, 70 ms of silence, then a GET_STATUS: answered")


def _slow(ctx: Context) -> Row:
    """A frame in three pieces 10 ms apart. If the host itself stalls so that a gap
    reaches 30 ms, that try proves nothing: it tries again, three times at most."""
    port, clock = ctx.port, ctx.clock
    for _ in range(3):
        m = GetStatus(seq=port.next_seq())
        wire = encode(m)
        port.write(b"\x00")
        times = []
        for piece in (wire[:5], wire[5:10]):
            times.append(port.write(piece))
            port.read(clock.now() + 0.01)
        times.append(clock.now())
        problem = _answers(ctx, wire[10:], [m], "a GET_STATUS in 3 pieces 10 ms apart")
        worst = max(b - a for a, b in itertools.pairwise(times))
        if worst < 0.03:
            if problem:
                return Row(*SLOW_RULE, FAIL, problem)
            return Row(*SLOW_RULE, PASS, "a GET_STATUS in 3 pieces 10 ms apart: answered")
    return Row(*SLOW_RULE, SKIP, "the host could not write pieces 10 ms apart (it stalled)")


def _response_time(ctx: Context) -> Row:
    port, clock = ctx.port, ctx.clock
    times, sizes = [], []
    for _ in range(ROUND_TRIPS):
        t = clock.now()
        got = port.ask(GetStatus())
        if got is None:
            return Row(*RESPONSE_RULE, FAIL, "a GET_STATUS got no answer within 0.5 s")
        times.append(got.t - t)
        sizes.append(len(encode(got.message)))
    request_wire = port.wire_time(len(encode(GetStatus())))
    budget = 0.005 + request_wire + port.wire_time(max(sizes))
    # the host's delays only add to a round trip: the fastest is the one least
    # spoilt by them, so a busy host never fails a unit that answers in time
    fastest, median = min(times), statistics.median(times)
    seen = (
        f"fastest {fastest * 1000:.2f} ms, median {median * 1000:.2f} ms, worst "
        f"{max(times) * 1000:.2f} ms, for a budget of {budget * 1000:.2f} ms (5 ms + wire "
        f"time at {port.baud} baud)"
    )
    tried = (f"{ROUND_TRIPS} GET_STATUS, one at a time",)
    window = (
        f"the fastest round trip within {budget * 1000:.2f} ms + {HOST_LATENCY_S * 1000:g} ms "
        "for the host's own latency"
    )
    if fastest > budget + HOST_LATENCY_S:
        return Row(*RESPONSE_RULE, FAIL, seen, tried, window)
    return Row(*RESPONSE_RULE, PASS, seen, tried, window)


def _one(rule: tuple[str, str], name: str, judge: Callable[[Context], Row]) -> Clause:
    def rules(ctx: Context) -> list[tuple[str, str]]:
        return [rule]

    def run(ctx: Context) -> list[Row]:
        return [judge(ctx)]

    return Clause(name, rules, run)


# --- judged from the whole run ---------------------------------------------------------------


def _counter(ctx: Context) -> Row:
    events = [r.message for r in ctx.port.log if isinstance(r.message, Event)]
    if len(events) < 2:
        return Row(*COUNTER_RULE, SKIP, f"{len(events)} event(s) seen: events need output")
    gaps = [(a.seq, b.seq) for a, b in itertools.pairwise(events) if b.seq != (a.seq + 1) & 0xFFFF]
    if gaps:
        shown = ", ".join(f"{a} then {b}" for a, b in gaps[:3])
        return Row(*COUNTER_RULE, FAIL, f"{len(gaps)} jump(s) in {len(events)} events: {shown}")
    return Row(
        *COUNTER_RULE, PASS, f"{len(events)} events, {events[0].seq} to {events[-1].seq}, no gap"
    )


def _frames(ctx: Context) -> Row:
    bad = ctx.port.bad_frames
    if bad:
        reasons = ", ".join(sorted({err.reason for _, err in bad}))
        return Row(*FRAMES_RULE, FAIL, f"{len(bad)} frame(s) from the unit rejected ({reasons})")
    return Row(*FRAMES_RULE, PASS, f"{len(ctx.port.log)} frames received, all valid")


def _returns(ctx: Context) -> Row:
    if not ctx.returns:
        return Row(*RETURN_RULE, SKIP, "no clause drove current")
    if ctx.return_problems:
        more = len(ctx.return_problems) - 1
        tail = f"; and {more} more" if more > 0 else ""
        return Row(*RETURN_RULE, FAIL, ctx.return_problems[0] + tail)
    return Row(
        *RETURN_RULE,
        PASS,
        f"IDLE, no fault, output 0 after each of {ctx.returns} clauses and vectors",
    )


CLAUSES = [
    _one(GARBAGE_RULE, "garbage", _garbage),
    _one(BACK_TO_BACK_RULE, "back to back", _back_to_back),
    _one(GAP_RULE, "gap", _gap),
    _one(SLOW_RULE, "slow frame", _slow),
    _one(RESPONSE_RULE, "response time", _response_time),
]
FINAL_CLAUSES = [
    _one(RETURN_RULE, "returns to IDLE", _returns),
    _one(COUNTER_RULE, "event counter", _counter),
    _one(FRAMES_RULE, "frames", _frames),
]
