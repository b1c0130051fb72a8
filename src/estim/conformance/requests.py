"""Clauses driven by the golden vectors: each request vector's reply judged by the
unit's own limits (5.1, 5.3, 6.1), each invalid frame's reply (3.4), and each
sequence (3.4, 5.2, 5.3, 6.1, 10).

A unit has a past: channel configurations survive (6.1), it remembers the last
CONFIGURE_CHANNEL, SET_AMPLITUDE and CLEAR_FAULT answers by seq and every session
that ended since boot (10), and it may not be rebooted between runs. So:

- request vectors are sent as they are, except that a START gets a fresh session
  id and the remembered kinds a fresh seq (a copy of a request from an earlier
  run would get that run's answer);
- sequences get fresh seqs and session ids throughout, mapped consistently, so
  that a copy within a sequence stays a copy;
- START's replies depend on which channels are configured, and a configuration
  cannot be undone. The suite configures channel 1 and probes every channel with
  a START no unit can accept (dwell, watchdog and ramp out of range; the
  configuration check comes first, 5.3), then reconfigures each channel found
  configured so that its target is known. A channel found unconfigured stays so.
  START vectors are judged by the channels as found: the reference unit's
  unconfigured channel 2 is judged as this unit's channel 2 actually is.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

from estim.protocol import (
    Ack,
    FrameError,
    Hello,
    Start,
    cobs_decode,
    cobs_encode,
    encode,
    message_from_dict,
    message_to_dict,
)

from .clause import FAIL, PASS, SKIP, Clause, Context, Failed, Row
from .limits import NoSession, channel_config, session_shape
from .matching import describe, describe_all, matches
from .replies import REFERENCE, UnitModel, reference_reply
from .sequences import sequence_vectors
from .sessions import idle_problem, to_idle
from .vectors import invalid_vectors, valid_vectors

#: requests a unit remembers by seq (PROTOCOL.md 10)
REMEMBERED = frozenset({"CONFIGURE_CHANNEL", "SET_AMPLITUDE", "CLEAR_FAULT"})

REQUEST_RULES: dict[str, tuple[str, str]] = {
    "HELLO": (
        "4, 5.1",
        "HELLO vectors: DEVICE_INFO, or the refusal of a malformed or foreign range",
    ),
    "CONFIGURE_CHANNEL": (
        "5.1, 5.3",
        "CONFIGURE_CHANNEL vectors: ACK within the limits, else the field and channel",
    ),
    "SET_AMPLITUDE": ("6.1", "SET_AMPLITUDE vectors in IDLE: NACK NO_SESSION, field SESSION_ID"),
    "HEARTBEAT": ("6.1", "HEARTBEAT vectors in IDLE: ACK for session 0, else NACK NO_SESSION"),
    "STOP": ("6.1, 8.4", "STOP vectors in IDLE: ACK, whatever the reason byte"),
    "GET_STATUS": ("6.1", "GET_STATUS in IDLE: STATUS, state IDLE"),
    "CLEAR_FAULT": ("6.1", "CLEAR_FAULT in IDLE: ACK, no effect"),
    "START": ("5.1, 5.3", "START vectors: ACK within the limits, else the field and channel"),
}
PROBE_RULE = ("5.1, 5.3", "START checks each channel's configuration first: NOT_CONFIGURED")

INVALID_RULES: dict[str, tuple[str, str]] = {
    "cobs": ("3.4", "malformed COBS: dropped silently"),
    "crc": ("3.4", "a bad CRC: dropped silently"),
    "length": ("3.4", "a wrong length: dropped silently (a good-CRC STOP: ACK, it stops)"),
    "version": ("3.4, 4", "another version: NACK UNSUPPORTED_VERSION (a STOP: ACK)"),
    "kind": ("3.4", "a bad kind: dropped; a response's type as a request: NACK UNKNOWN_TYPE"),
    "flags": ("3.4", "flags not 0: NACK BAD_FLAGS (a STOP: ACK)"),
    "type": ("3.4", "an unknown type: NACK UNKNOWN_TYPE"),
    "payload": ("3.4", "a payload that does not fit: NACK BAD_PAYLOAD (a STOP: ACK)"),
}

#: each failing row names at most this many failures in full
_SHOWN = 1
EXACT = "exact: the reply the spec prescribes for the unit's own limits"


def _requests() -> list[dict[str, Any]]:
    return valid_vectors()["requests"]


def _summary(problems: list[str], judged: int, what: str) -> tuple[str, str]:
    if not problems:
        return PASS, f"{judged}/{judged} {what} as prescribed"
    more = len(problems) - _SHOWN
    tail = f"; and {more} more" if more > 0 else ""
    return FAIL, "; ".join(problems[:_SHOWN]) + tail


# --- request vectors ------------------------------------------------------------------


def _judge(
    ctx: Context, name: str, wire: bytes, sent: dict[str, Any], expected: dict[str, Any]
) -> str | None:
    """Send one request; None if the unit answered as ``expected``, else why not."""
    starts = expected["type"] == "ACK" and sent["type"] == "START"
    ex = ctx.port.exchange(wire, 2 if starts else 1)
    frames = ex.dicts()
    answers = [f for f in frames if f["type"] in _RESPONSES and f["seq"] == sent["seq"]]
    others = [f for f in frames if f not in answers]
    if len(answers) != 1:
        return f"{name}: expected {describe(expected)}, got {describe_all(frames)}"
    got = answers[0]
    if {k: got.get(k) for k in expected} != expected:
        return f"{name}: expected {describe(expected)}, got {describe(got, expected)}"
    if starts:
        others = [
            f
            for f in others
            if f["type"] != "OUTPUT_STARTED" or f["session_id"] != sent["session_id"]
        ]
    if others:
        return f"{name}: answered right, but also sent {describe_all(others)}"
    if got["type"] == "DEVICE_INFO" and ctx.info is not None:
        again = {k: v for k, v in got.items() if k != "seq"}
        first = {k: v for k, v in message_to_dict(ctx.info).items() if k != "seq"}
        if again != first:
            return f"{name}: a DEVICE_INFO unlike the first one"
    if not ex.fenced:
        return f"{name}: no answer to the GET_STATUS sent after it"
    return None


_RESPONSES = frozenset({"ACK", "NACK", "DEVICE_INFO", "STATUS"})


def _as_sent(ctx: Context, vector: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The vector's bytes, or its message renumbered (see the module docstring)."""
    m = dict(vector["message"])
    renumbered = False
    if m["type"] == "START" and m["session_id"]:
        m["session_id"] = ctx.port.new_session_id()
        renumbered = True
    if m["type"] in REMEMBERED:
        m["seq"] = ctx.port.next_seq()
        renumbered = True
    if not renumbered:
        return bytes.fromhex(vector["hex"]), m
    return encode(message_from_dict(m)), m


def _request_clause(kind: str) -> Clause:
    def rules(ctx: Context) -> list[tuple[str, str]]:
        return [REQUEST_RULES[kind]]

    def run(ctx: Context) -> list[Row]:
        problems = []
        tried = []
        for vector in _requests():
            if vector["message"]["type"] != kind:
                continue
            wire, sent = _as_sent(ctx, vector)
            expected = reference_reply(sent, ctx.model())
            problem = _judge(ctx, vector["name"], wire, sent, expected)
            tried.append(f"{vector['name']}: {describe(expected)}")
            if problem is not None:
                problems.append(problem)
            if kind == "HELLO":  # a unit that also speaks a later version may have
                ctx.port.ask(Hello(min_version=1, max_version=1))  # agreed it: back to 1
        result = _summary(problems, len(tried), "vectors")
        return [Row(*REQUEST_RULES[kind], *result, tuple(tried), EXACT)]

    return Clause(f"requests {kind}", rules, run)


def _impossible_start(ctx: Context, channel: int) -> Start | None:
    """A START for one channel that no unit with these limits can accept: dwell,
    watchdog and ramp out of range (None if the limits leave none)."""
    info = ctx.unit
    dwell = info.dwell_max_ms + 1 if info.dwell_max_ms < 0xFFFFFFFF else info.dwell_min_ms - 1
    watchdog = info.watchdog_min_ms - 1 if info.watchdog_min_ms else info.watchdog_max_ms + 1
    start = Start(
        session_id=ctx.port.new_session_id(),
        dwell_ms=max(0, dwell),
        ramp_ms=0xFFFFFFFF,
        watchdog_ms=min(watchdog, 0xFFFF),
        channel_mask=1 << (channel - 1),
    )
    if reference_reply(message_to_dict(start), UnitModel(info, {channel: 1}))["type"] == "ACK":
        return None
    return start


def _probe(ctx: Context) -> Row:
    """Configure channel 1; find which other channels are configured (see the module
    docstring); leave every configured channel at a known target."""
    info, port = ctx.unit, ctx.port
    try:
        amplitude = session_shape(info, info.dwell_min_ms).amplitude_ua
        configure = channel_config(info, 1, amplitude)
    except NoSession as err:
        raise Failed(str(err)) from None
    got = port.ask(configure)
    if got is None or not isinstance(got.message, Ack):
        raise Failed(
            f"channel 1: CONFIGURE_CHANNEL got {describe(got.as_dict()) if got else 'nothing'}"
        )
    ctx.targets = {1: amplitude}
    problems, unconfigured, configured = [], [], []
    for channel in range(1, info.channel_count + 1):
        start = _impossible_start(ctx, channel)
        if start is None:
            return Row(*PROBE_RULE, SKIP, "the unit's limits leave no START it must refuse")
        sent = message_to_dict(start)
        if_configured = reference_reply(sent, UnitModel(info, {channel: amplitude}))
        if_not = reference_reply(sent, UnitModel(info, {}))
        answer = port.ask(start)
        got_dict = answer.as_dict() if answer is not None else None
        if answer is not None and isinstance(answer.message, Ack):
            ctx.stimulated = True
            to_idle(ctx, "a START that should have been refused")
        if got_dict is not None and _fits(got_dict, if_configured):
            configured.append(channel)
        elif got_dict is not None and _fits(got_dict, if_not) and channel != 1:
            unconfigured.append(channel)
        else:
            want = describe(if_configured)
            if channel != 1:
                want = f"{describe(if_not)} or {want}"
            problems.append(f"channel {channel}: expected {want}, got {describe(got_dict)}")
    for channel in configured:
        if channel == 1:
            continue
        got = port.ask(channel_config(info, channel, amplitude))
        if got is None or not isinstance(got.message, Ack):
            problems.append(
                f"channel {channel}: CONFIGURE_CHANNEL got {describe(got.as_dict()) if got else 'nothing'}"
            )
            continue
        ctx.targets[channel] = amplitude
    if problems:
        return Row(*PROBE_RULE, FAIL, "; ".join(problems))
    if not unconfigured:
        return Row(
            *PROBE_RULE,
            SKIP,
            "every channel was configured before this run (configurations survive, 6.1), "
            "so no START could name an unconfigured one",
        )
    names = ", ".join(str(n) for n in unconfigured)
    return Row(
        *PROBE_RULE,
        PASS,
        f"NOT_CONFIGURED for channel(s) {names}; configured: {', '.join(map(str, configured))}",
    )


def _fits(got: dict[str, Any], expected: dict[str, Any]) -> bool:
    return {k: got.get(k) for k in expected} == expected


def _start_rules(ctx: Context) -> list[tuple[str, str]]:
    return [PROBE_RULE, REQUEST_RULES["START"]]


def _start_run(ctx: Context) -> list[Row]:
    probe = _probe(ctx)
    problems = []
    tried = []
    for vector in _requests():
        if vector["message"]["type"] != "START":
            continue
        wire, sent = _as_sent(ctx, vector)
        expected = reference_reply(sent, ctx.model())
        ctx.stimulated = True
        problem = _judge(ctx, vector["name"], wire, sent, expected)
        tried.append(f"{vector['name']}: {describe(expected)}")
        to_idle(ctx, vector["name"])
        if problem is not None:
            problems.append(problem)
    result = _summary(problems, len(tried), "vectors")
    return [probe, Row(*REQUEST_RULES["START"], *result, tuple(tried), EXACT)]


# --- invalid frames -------------------------------------------------------------------------


def _invalid_clause() -> Clause:
    def rules(ctx: Context) -> list[tuple[str, str]]:
        return list(INVALID_RULES.values())

    def run(ctx: Context) -> list[Row]:
        problems: dict[str, list[str]] = {reason: [] for reason in INVALID_RULES}
        tried: dict[str, list[str]] = {reason: [] for reason in INVALID_RULES}
        for vector in invalid_vectors():
            expected = [] if vector["reply"] is None else [vector["reply"]]
            ex = ctx.port.exchange(bytes.fromhex(vector["hex"]), len(expected))
            got = ex.dicts()
            tried[vector["error"]].append(f"{vector['name']}: {describe_all(expected)}")
            if not matches(expected, got):
                problems[vector["error"]].append(
                    f"{vector['name']}: expected {describe_all(expected)}, got {describe_all(got, expected)}"
                )
            elif not ex.fenced:
                problems[vector["error"]].append(
                    f"{vector['name']}: no answer to the GET_STATUS after it"
                )
        return [
            Row(
                *INVALID_RULES[reason],
                *_summary(problems[reason], len(tried[reason]), "frames"),
                tuple(tried[reason]),
                EXACT,
            )
            for reason in INVALID_RULES
        ]

    return Clause("invalid frames", rules, run)


# --- sequences -----------------------------------------------------------------------------


class _Renumber:
    """Fresh seqs and session ids for a sequence, each old one always to the same new one."""

    def __init__(self, ctx: Context) -> None:
        self.port = ctx.port
        self.seqs: dict[int, int] = {}
        self.sessions: dict[int, int] = {0: 0}

    def seq(self, old: int) -> int:
        if old not in self.seqs:
            self.seqs[old] = self.port.next_seq()
        return self.seqs[old]

    def session(self, old: int) -> int:
        if old not in self.sessions:
            self.sessions[old] = self.port.new_session_id()
        return self.sessions[old]

    def step(self, step: dict[str, Any]) -> tuple[bytes, list[dict[str, Any]]]:
        if "message" in step:
            m = self.fields(step["message"])
            wire = encode(message_from_dict(m))
        else:
            wire = self.raw(bytes.fromhex(step["hex"]))
        return wire, [self.fields(e) for e in step["expect"]]

    def fields(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.fields(v) for v in value]
        if not isinstance(value, dict):
            return value
        out = {}
        for k, v in value.items():
            if k == "seq" and isinstance(v, int):
                out[k] = self.seq(v)
            elif k == "session_id" and isinstance(v, int):
                out[k] = self.session(v)
            else:
                out[k] = self.fields(v)
        return out

    def raw(self, wire: bytes) -> bytes:
        """A raw frame with its seq renumbered, if its CRC is good (else as it is)."""
        try:
            frame = cobs_decode(wire[:-1])
        except FrameError:
            return wire
        body = bytearray(frame[:-4])
        if len(frame) < 12 or struct.pack("<I", zlib.crc32(body)) != frame[-4:]:
            return wire
        (old,) = struct.unpack_from("<H", body, 2)
        struct.pack_into("<H", body, 2, self.seq(old))
        return cobs_encode(bytes(body) + struct.pack("<I", zlib.crc32(body))) + b"\x00"


def _stimulates(sequence: dict[str, Any]) -> bool:
    return any(
        step.get("message", {}).get("type") == "START"
        or any(e.get("type") == "OUTPUT_STARTED" for e in step["expect"])
        for step in sequence["steps"]
    )


def _sequences(ctx: Context, stimulating: bool) -> list[dict[str, Any]]:
    info = ctx.info if ctx.info is not None else REFERENCE.info
    return [s for s in sequence_vectors(info) if _stimulates(s) == stimulating]


def _run_sequence(ctx: Context, sequence: dict[str, Any]) -> Row:
    numbers = _Renumber(ctx)
    rule = (sequence["section"], sequence["name"])
    for i, step in enumerate(sequence["steps"], 1):
        wire, expect = numbers.step(step)
        ex = ctx.port.exchange(wire, len(expect))
        got = ex.dicts()
        what = re.sub(r", seq \d+$", "", step.get("note") or step["message"]["type"])
        if not matches(expect, got):
            return Row(
                *rule,
                FAIL,
                f"step {i} ({what}): expected {describe_all(expect)}, got {describe_all(got, expect)}",
            )
        if not ex.fenced:
            return Row(*rule, FAIL, f"step {i} ({what}): no answer to the GET_STATUS after it")
    steps = len(sequence["steps"])
    tried = (f"{steps} steps of vectors/sequences.json, renumbered",)
    return Row(*rule, PASS, f"{steps} step{'s' if steps != 1 else ''} as prescribed", tried, EXACT)


def _sequence_clause(stimulating: bool) -> Clause:
    def rules(ctx: Context) -> list[tuple[str, str]]:
        return [(s["section"], s["name"]) for s in _sequences(ctx, stimulating)]

    def run(ctx: Context) -> list[Row]:
        rows = []
        for sequence in _sequences(ctx, stimulating):
            if stimulating:
                ctx.stimulated = True
            row = _run_sequence(ctx, sequence)
            if stimulating:
                to_idle(ctx, sequence["name"])
            else:
                problem = idle_problem(ctx.port.status())
                if problem is not None and row.result == PASS:
                    row = Row(row.section, row.rule, FAIL, f"left the unit in {problem}")
            rows.append(row)
        return rows

    return Clause("sequences" + (" with output" if stimulating else ""), rules, run, stimulating)


IDLE_CLAUSES = [
    *(_request_clause(kind) for kind in REQUEST_RULES if kind != "START"),
    _invalid_clause(),
    _sequence_clause(stimulating=False),
]
OUTPUT_CLAUSES = [
    Clause("requests START", _start_rules, _start_run, stimulating=True),
    _sequence_clause(stimulating=True),
]

__all__ = ["IDLE_CLAUSES", "OUTPUT_CLAUSES", "REQUEST_RULES"]
