"""Sequence vectors: the rules that take more than one request (3.4, 5.2, 5.3, 6.1,
10), as steps of bytes to send and the frames a unit must send back.

Each sequence starts from a unit that is IDLE with no fault latched and its
electrodes connected, and leaves it IDLE. Each uses its own seq numbers and
session ids, so the sequences run one after another on one unit without a reset.
No time passes on purpose: the watchdog in them is the unit's longest and the
ramps 5 s, so nothing acts on its own during a sequence. The expectations are
written from the spec's text, not read off the simulator.

``sequence_vectors(info)`` builds them for a unit with the limits ``info``
reports; for the reference unit (the default) they are ``vectors/sequences.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from estim.protocol import (
    IMPEDANCE_UNKNOWN,
    Ack,
    ConfigureChannel,
    DeviceInfo,
    GetStatus,
    Heartbeat,
    Kind,
    Message,
    MessageType,
    RampDone,
    SetAmplitude,
    Start,
    State,
    Stop,
    StopReason,
    encode,
    message_to_dict,
)
from estim.protocol.frame import encode_payload

from .limits import channel_config, lower_amplitude, session_shape
from .replies import REFERENCE
from .vectors import raw_frame, recrc, wire

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class _Choices:
    """What the sequences send to a unit with these limits."""

    info: DeviceInfo
    first: int  # channel 1's target (12 mA on the reference unit)
    second: int  # a different target (10 mA)
    ramp_ms: int

    @classmethod
    def of(cls, info: DeviceInfo) -> _Choices:
        shape = session_shape(info, info.dwell_max_ms)
        first = shape.amplitude_ua
        second = lower_amplitude(info, first)
        ramp = shape.ramp_ms
        if second * 1000 > info.slew_max_ua_per_s * ramp:  # one step above: a longer ramp
            ramp = -(-second * 1000 // info.slew_max_ua_per_s)
        return cls(info, first, second, ramp)

    def configure(self, channel: int, amplitude_ua: int | None = None) -> ConfigureChannel:
        return channel_config(self.info, channel, amplitude_ua or self.first)

    def start(self, session_id: int, channel_mask: int = 1) -> Start:
        return Start(
            session_id=session_id,
            dwell_ms=self.info.dwell_max_ms,
            ramp_ms=self.ramp_ms,
            watchdog_ms=self.info.watchdog_max_ms,
            channel_mask=channel_mask,
        )

    def channels(self, first: dict[str, Any], others: dict[str, Any]) -> list[dict[str, Any]]:
        """STATUS.channels: ``first`` for channel 1, ``others`` for the rest."""
        return [first] + [dict(others) for _ in range(self.info.channel_count - 1)]


class _Sequence:
    def __init__(self, index: int, name: str, section: str) -> None:
        self.name = name
        self.section = section
        self.next_seq = 0x1000 + 0x40 * index
        self.session = 0x5E000000 + 0x100 * index
        self.steps: list[dict[str, Any]] = []

    def take_seq(self) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return seq

    def send(self, message: M, *expect: dict[str, Any]) -> M:
        if message.seq == 0:
            message = replace(message, seq=self.take_seq())
        self.steps.append(
            {
                "hex": encode(message).hex(),
                "message": message_to_dict(message),
                "expect": list(expect),
            }
        )
        return message

    def send_raw(self, note: str, frame: bytes, *expect: dict[str, Any]) -> None:
        self.steps.append({"hex": wire(frame), "note": note, "expect": list(expect)})

    def vector(self) -> dict[str, Any]:
        return {"name": self.name, "section": self.section, "steps": self.steps}


def _ack_of(m: Message, state: str) -> dict[str, Any]:
    return {"type": "ACK", "seq": m.seq, "request_type": m.TYPE.name, "state": state}


def _nack_of(m: Message, error: str, field: str, channel: int, state: str) -> dict[str, Any]:
    return {
        "type": "NACK",
        "seq": m.seq,
        "request_type": m.TYPE.name,
        "error": error,
        "field": field,
        "channel": channel,
        "state": state,
    }


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


def _begin(q: _Sequence, c: _Choices, session_id: int, channel_mask: int = 1) -> Start:
    """Configure channel 1 (and 2 if in the mask) and start ``session_id``."""
    for channel in (1, 2):
        if channel_mask & (1 << (channel - 1)):
            m = q.send(c.configure(channel))
            q.steps[-1]["expect"] = [_ack_of(m, "IDLE")]
    start = q.send(c.start(session_id, channel_mask))
    q.steps[-1]["expect"] = [
        _ack_of(start, "RAMPING_UP"),
        _event(
            "OUTPUT_STARTED",
            session_id=session_id,
            dwell_ms=start.dwell_ms,
            channel_mask=channel_mask,
        ),
    ]
    return start


def _end(q: _Sequence, session_id: int) -> None:
    stop = q.send(Stop(reason=StopReason.OPERATOR))
    q.steps[-1]["expect"] = [
        _ack_of(stop, "IDLE"),
        _event("STOPPED", session_id=session_id, reason="OPERATOR"),
    ]


def sequence_vectors(info: DeviceInfo = REFERENCE.info) -> list[dict[str, Any]]:
    """``{"name", "section", "steps"}`` for a unit reporting ``info``."""
    c = _Choices.of(info)
    out: list[_Sequence] = []

    def new(name: str, section: str) -> _Sequence:
        q = _Sequence(len(out), name, section)
        out.append(q)
        return q

    # 3.4 and 8.4: a STOP is never lost to a format error, and is ACKed
    malformed_stops: tuple[tuple[str, Callable[[int], bytes]], ...] = (
        ("without its reason byte", lambda seq: raw_frame(MessageType.STOP, b"", seq=seq)),
        ("with flags 0x01", lambda seq: raw_frame(MessageType.STOP, b"\x01", seq=seq, flags=1)),
        (
            "in a version-2 frame",
            lambda seq: raw_frame(MessageType.STOP, b"\x01", seq=seq, version=2),
        ),
    )
    for label, frame_of in malformed_stops:
        q = new(f"a STOP {label} while output is on: ACK, output off, STOPPED reason 0", "3.4")
        _begin(q, c, q.session)
        seq = q.take_seq()
        q.send_raw(
            f"STOP {label}, seq {seq}",
            frame_of(seq),
            {"type": "ACK", "seq": seq, "request_type": "STOP", "state": "IDLE"},
            _event("STOPPED", session_id=q.session, reason="UNSPECIFIED"),
        )
    q = new("a malformed STOP in IDLE is ACKed, and nothing else happens", "3.4")
    seq = q.take_seq()
    q.send_raw(
        f"STOP with flags 0x01, seq {seq}",
        raw_frame(MessageType.STOP, b"\x01", seq=seq, flags=1),
        {"type": "ACK", "seq": seq, "request_type": "STOP", "state": "IDLE"},
    )

    q = new("frames of any kind but 1 are never answered", "3.4")
    for kind in (0, 2, 3, 4, 255):
        seq = q.take_seq()
        q.send_raw(
            f"HEARTBEAT payload in a frame of kind {kind}",
            raw_frame(MessageType.HEARTBEAT, bytes(4), kind=kind, seq=seq),
        )
    seq = q.take_seq()
    q.send_raw(
        "a request whose header says 5 payload bytes for 4 (CRC good): dropped",
        recrc(raw_frame(MessageType.HEARTBEAT, bytes(4), seq=seq)[:6] + b"\x05\x00" + bytes(4)),
    )

    _sequences_of_memory_and_state(new, c, info)
    return [q.vector() for q in out]


def _sequences_of_memory_and_state(
    new: Callable[[str, str], _Sequence], c: _Choices, info: DeviceInfo
) -> None:
    """Section 10's duplicates and memory, 3.4's ignored frames, what a running unit
    answers (6.1, 5.3, 5.2), a START copy with other fields (1.4)."""
    # 10: duplicates
    q = new("a copy of the live session's START: ACK with the state now, no effect", "10")
    start = _begin(q, c, q.session)
    q.steps.append({**q.steps[-1], "expect": [_ack_of(start, "RAMPING_UP")]})
    _end(q, q.session)
    q.steps.append(
        {
            **q.steps[-3],
            "expect": [_nack_of(start, "SESSION_ENDED", "SESSION_ID", 0, "IDLE")],
        }
    )

    q = new("a copy of a remembered SET_AMPLITUDE after its session ended: ACK, state IDLE", "10")
    _begin(q, c, q.session)
    change = q.send(SetAmplitude(session_id=q.session, channel=1, amplitude_ua=c.second))
    q.steps[-1]["expect"] = [_ack_of(change, "RAMPING_UP")]
    _end(q, q.session)
    q.steps.append({**q.steps[-2], "expect": [_ack_of(change, "IDLE")]})

    q = new("a copy of a remembered CONFIGURE_CHANNEL is not carried out again", "10")
    first = q.send(c.configure(1, c.first))
    q.steps[-1]["expect"] = [_ack_of(first, "IDLE")]
    second = q.send(c.configure(1, c.second))
    q.steps[-1]["expect"] = [_ack_of(second, "IDLE")]
    q.steps.append({**q.steps[-2], "expect": [_ack_of(first, "IDLE")]})
    start = q.send(c.start(q.session))
    q.steps[-1]["expect"] = [
        _ack_of(start, "RAMPING_UP"),
        _event("OUTPUT_STARTED", session_id=q.session, dwell_ms=start.dwell_ms, channel_mask=1),
    ]
    status = q.send(GetStatus())
    q.steps[-1]["expect"] = [
        {
            "type": "STATUS",
            "seq": status.seq,
            "state": "RAMPING_UP",
            "session_id": q.session,
            "channels": c.channels(
                {"setpoint_ua": c.second}, {"setpoint_ua": 0, "amplitude_ua": 0}
            ),
        }
    ]
    _end(q, q.session)

    q = new("a copy of a STOP always acts, even on a later session", "10")
    _begin(q, c, q.session)
    stop = q.send(Stop(reason=StopReason.OPERATOR))
    q.steps[-1]["expect"] = [
        _ack_of(stop, "IDLE"),
        _event("STOPPED", session_id=q.session, reason="OPERATOR"),
    ]
    stop_step = q.steps[-1]
    later = q.session + 1
    start = q.send(c.start(later))
    q.steps[-1]["expect"] = [
        _ack_of(start, "RAMPING_UP"),
        _event("OUTPUT_STARTED", session_id=later, dwell_ms=start.dwell_ms, channel_mask=1),
    ]
    q.steps.append(
        {
            **stop_step,
            "expect": [
                _ack_of(stop, "IDLE"),
                _event("STOPPED", session_id=later, reason="OPERATOR"),
            ],
        }
    )

    # 10 (1.3): the state checks come before SESSION_ENDED
    q = new("a START naming an ended session while another is live: BAD_STATE", "10")
    _begin(q, c, q.session)
    _end(q, q.session)
    _begin(q, c, q.session + 1)
    ended = q.send(c.start(q.session))
    q.steps[-1]["expect"] = [_nack_of(ended, "BAD_STATE", "NONE", 0, "RAMPING_UP")]
    _end(q, q.session + 1)

    # 10 (1.3): a remembered answer is given as remembered, with the state now
    q = new(
        "a copy of a CONFIGURE_CHANNEL refused during a session, after it: the same refusal", "10"
    )
    _begin(q, c, q.session)
    refused = q.send(c.configure(1))
    q.steps[-1]["expect"] = [_nack_of(refused, "BAD_STATE", "NONE", 0, "RAMPING_UP")]
    refused_step = q.steps[-1]
    _end(q, q.session)
    q.steps.append({**refused_step, "expect": [_nack_of(refused, "BAD_STATE", "NONE", 0, "IDLE")]})

    # 3.4 (1.3): responses and events sent to a unit are ignored
    q = new("well-formed responses and events sent to a unit: no answer, no effect", "3.4")
    seq = q.take_seq()
    ack = Ack(request_type=int(MessageType.STOP), state=State.IDLE)
    q.send_raw(
        f"an ACK, seq {seq} (kind 2)",
        raw_frame(MessageType.ACK, encode_payload(ack), kind=int(Kind.RESPONSE), seq=seq),
    )
    seq = q.take_seq()
    done = RampDone(session_id=q.session, time_ms=0)
    q.send_raw(
        f"a RAMP_DONE event, seq {seq} (kind 3)",
        raw_frame(MessageType.RAMP_DONE, encode_payload(done), kind=int(Kind.EVENT), seq=seq),
    )
    status = q.send(GetStatus())
    q.steps[-1]["expect"] = [{"type": "STATUS", "seq": status.seq, "state": "IDLE"}]

    # 6.1 and 5.3: what a running unit answers
    q = new("HEARTBEATs while output is on: the live session, 0, another session", "6.1")
    _begin(q, c, q.session)
    beat = q.send(Heartbeat(session_id=q.session))
    q.steps[-1]["expect"] = [_ack_of(beat, "RAMPING_UP")]
    beat = q.send(Heartbeat(session_id=0))
    q.steps[-1]["expect"] = [_ack_of(beat, "RAMPING_UP")]
    beat = q.send(Heartbeat(session_id=q.session + 1))
    q.steps[-1]["expect"] = [_nack_of(beat, "NO_SESSION", "SESSION_ID", 0, "RAMPING_UP")]
    _end(q, q.session)

    q = new("refusals while output is on name their field and channel", "5.3")
    _begin(q, c, q.session)
    count, step = info.channel_count, info.amplitude_step_ua
    refusals = [
        (2, c.second, "CHANNEL", 2 if count >= 2 else 0),  # not a channel of the session
        (9, c.second, "CHANNEL", 0),  # not a channel of the unit
    ]
    if step > 1:  # off the unit's amplitude step
        refusals.append((1, c.second + step // 2, "AMPLITUDE", 1))
    if info.amplitude_max_ua + step <= 0xFFFFFFFF:  # above the unit's maximum
        refusals.append((1, info.amplitude_max_ua + step, "AMPLITUDE", 1))
    m: Message
    for channel, amplitude, field, named in refusals:
        m = q.send(SetAmplitude(session_id=q.session, channel=channel, amplitude_ua=amplitude))
        q.steps[-1]["expect"] = [_nack_of(m, "OUT_OF_RANGE", field, named, "RAMPING_UP")]
    m = q.send(c.start(q.session + 1))
    q.steps[-1]["expect"] = [_nack_of(m, "BAD_STATE", "NONE", 0, "RAMPING_UP")]
    m = q.send(c.configure(min(2, count)))
    q.steps[-1]["expect"] = [_nack_of(m, "BAD_STATE", "NONE", 0, "RAMPING_UP")]
    _end(q, q.session)

    q = new("STATUS reports impedance only for the live session's channels", "5.2")
    m = q.send(GetStatus())
    unknown = IMPEDANCE_UNKNOWN
    q.steps[-1]["expect"] = [
        {
            "type": "STATUS",
            "seq": m.seq,
            "state": "IDLE",
            "channels": c.channels({"impedance_ohm": unknown}, {"impedance_ohm": unknown}),
        }
    ]
    _begin(q, c, q.session)
    m = q.send(GetStatus())
    q.steps[-1]["expect"] = [
        {
            "type": "STATUS",
            "seq": m.seq,
            "state": "RAMPING_UP",
            "session_id": q.session,
            "channels": c.channels({"impedance_ohm": {"not": unknown}}, {"impedance_ohm": unknown}),
        }
    ]
    _end(q, q.session)
    # 6.1, 10 (1.4): a START naming the live session with other fields is not a copy
    q = new("a START naming the live session with another dwell: BAD_STATE, no effect", "6.1, 10")
    _begin(q, c, q.session)
    other = q.send(replace(c.start(q.session), dwell_ms=info.dwell_min_ms))
    q.steps[-1]["expect"] = [_nack_of(other, "BAD_STATE", "NONE", 0, "RAMPING_UP")]
    again = q.send(c.start(q.session))
    q.steps[-1]["expect"] = [_ack_of(again, "RAMPING_UP")]
    status = q.send(GetStatus())
    q.steps[-1]["expect"] = [
        {"type": "STATUS", "seq": status.seq, "state": "RAMPING_UP", "session_id": q.session}
    ]
    _end(q, q.session)
