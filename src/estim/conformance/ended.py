"""An ended session never restarts, however many sessions later (PROTOCOL.md 10).

A unit keeps the ids of its last E ended sessions and a floor below which every
id is refused; one that keeps only the list restarts a replayed START once E
newer sessions have pushed it out (E = 32 and 64 on 1.3's two units). The
clause ends one session, runs SESSIONS more, each started and stopped in one
write, and replays the first START between them, past every list size a unit
is likely to have. Drives current (briefly, from 0 at the ramp's foot): run only
on a confirmed test load."""

from __future__ import annotations

from dataclasses import replace

from estim.protocol import Stop, StopReason, encode

from .clause import FAIL, PASS, Clause, Context, Row
from .matching import describe, describe_all
from .sessions import begin, long_plan, to_idle

RULE = ("10", "an ended session's START is refused SESSION_ENDED, however many sessions later")
#: sessions after the first, and when its START is replayed: around every power of
#: two a list might have, and past them
SESSIONS = 300
REPLAY_AFTER = (1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 300)


def _rules(ctx: Context) -> list[tuple[str, str]]:
    return [RULE]


def _run(ctx: Context) -> list[Row]:
    port = ctx.port
    shape = long_plan(ctx)
    first = begin(ctx, shape, watchdog_ms=ctx.unit.watchdog_max_ms)
    to_idle(ctx, "the session to replay")
    tried = tuple(f"its START replayed after {n} more" for n in REPLAY_AFTER)
    window = "exact: NACK SESSION_ENDED, field SESSION_ID, channel 0, and no OUTPUT_STARTED"
    problems = []
    for n in range(1, SESSIONS + 1):
        start = replace(first.start, seq=port.next_seq(), session_id=port.new_session_id())
        wire = encode(start) + encode(Stop(seq=port.next_seq(), reason=StopReason.OPERATOR))
        ex = port.exchange(wire, 4)
        kinds = [f["type"] for f in ex.dicts()]
        events = [k for k in kinds if k not in ("ACK", "NACK")]
        # each answer comes before the events its request causes (6.1); the STOP's
        # ACK may come before OUTPUT_STARTED
        if sorted(kinds) != ["ACK", "ACK", "OUTPUT_STARTED", "STOPPED"] or events != [
            "OUTPUT_STARTED",
            "STOPPED",
        ]:
            problems.append(f"session {n} (started and stopped): {describe_all(ex.dicts())}")
            to_idle(ctx, f"session {n} of the replay clause")
            break
        if n in REPLAY_AFTER:
            replay = replace(first.start, seq=port.next_seq())
            ex = port.exchange(encode(replay), 1)
            got = ex.dicts()
            want = {
                "type": "NACK",
                "error": "SESSION_ENDED",
                "field": "SESSION_ID",
                "channel": 0,
                "state": "IDLE",
            }
            answer = next((f for f in got if f.get("seq") == replay.seq), None)
            if answer is None or {k: answer.get(k) for k in want} != want or len(got) != 1:
                problems.append(
                    f"the START of the first session replayed after {n} more: expected "
                    f"{describe(want)}, got {describe_all(got)}"
                )
                to_idle(ctx, "a replayed START")
                break
    if problems:
        return [Row(*RULE, FAIL, "; ".join(problems), tried, window)]
    return [
        Row(
            *RULE,
            PASS,
            f"replayed {len(REPLAY_AFTER)} times across {SESSIONS} later sessions: always SESSION_ENDED",
            tried,
            window,
        )
    ]


CLAUSES = [Clause("ended sessions", _rules, _run, stimulating=True)]
