"""Regenerate the golden vectors and PROTOCOL.md's message tables from the codec.

    python firmware_protocol/generate.py          # rewrite vectors/*.json and the tables
    python firmware_protocol/generate.py --check  # exit 1 if anything would change

The vectors are golden: once committed, a codec change that alters a byte fails
the tests until someone regenerates on purpose and reviews the diff. The tests
also run ``--check`` logic, so the spec's tables always match the codec.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import zlib
from dataclasses import fields as dataclass_fields, replace
from pathlib import Path
from typing import Any

from estim.protocol import (
    MAX_CHANNELS,
    MAX_PAYLOAD,
    MESSAGE_CLASSES,
    ChannelStatus,
    ConfigureChannel,
    FrameError,
    GetStatus,
    Heartbeat,
    Kind,
    Message,
    MessageType,
    Mode,
    SetAmplitude,
    Start,
    Stop,
    StopReason,
    Waveform,
    build_frame,
    cobs_decode,
    cobs_encode,
    encode,
    message_to_dict,
)
from estim.protocol.fields import Codec, CodeU8, EnumU8, Records, Text, UInt, fields_from_json
from estim.protocol.frame import encode_payload

HERE = Path(__file__).resolve().parent
VECTORS = HERE / "vectors"
SPEC = HERE / "PROTOCOL.md"


def _markers(section: str) -> tuple[str, str]:
    return (
        f"<!-- BEGIN GENERATED: {section} (firmware_protocol/generate.py) -->",
        f"<!-- END GENERATED: {section} -->",
    )


DIRECTION = {
    Kind.REQUEST: "host_to_device",
    Kind.RESPONSE: "device_to_host",
    Kind.EVENT: "device_to_host",
}


def _fields(cls: type) -> list[tuple[str, Codec[Any], str, str]]:
    return [
        (f.name, f.metadata["codec"], f.metadata["unit"], f.metadata["doc"])
        for f in dataclass_fields(cls)
        if "codec" in f.metadata
    ]


# --- values for vectors ----------------------------------------------------

_TYPICAL: dict[str, int] = {
    "min_version": 1,
    "max_version": 1,
    "channel": 1,
    "frequency_dhz": 20,
    "pulse_width_us": 250,
    "amplitude_ua": 12000,
    "alt_frequency_dhz": 0,
    "switch_ms": 0,
    "session_id": 0x5E551011,
    "dwell_ms": 480000,
    "ramp_ms": 5000,
    "watchdog_ms": 500,
    "channel_mask": 1,
    "reason": 1,
    "request_type": 0x03,
    "field": 0,
    "error": 5,
    "protocol_version": 1,
    "channel_count": 2,
    "flags": 1,
    "waveforms": 0b111,
    "modes": 0b111,
    "amplitude_max_ua": 50000,
    "amplitude_step_ua": 100,
    "frequency_min_dhz": 10,
    "frequency_max_dhz": 1500,
    "pulse_width_min_us": 50,
    "pulse_width_max_us": 500,
    "slew_max_ua_per_s": 10000,
    "watchdog_min_ms": 200,
    "watchdog_max_ms": 2000,
    "dwell_min_ms": 60000,
    "dwell_max_ms": 600000,
    "ramp_max_ms": 30000,
    "lead_off_ohm": 20000,
    "time_ms": 123456,
    "elapsed_ms": 60000,
    "remaining_ms": 420000,
    "faults": 0,
    "fault_channel": 0,
    "delivered_ms": 480000,
    "fault": 1,
    "button": 1,
    "cause": 1,
}
_TEXT = {"model": "estim-sim", "serial_number": "SIM-0001", "firmware": "1.0.0"}


def _typical(cls: type) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, codec, _, _ in _fields(cls):
        if isinstance(codec, UInt):
            values[name] = _TYPICAL[name]
        elif isinstance(codec, EnumU8):
            values[name] = next(iter(codec.enum))
        elif isinstance(codec, Text):
            values[name] = _TEXT[name]
        elif isinstance(codec, Records):
            values[name] = (
                ChannelStatus(amplitude_ua=12000, setpoint_ua=12000, impedance_ohm=2000),
                ChannelStatus(amplitude_ua=0, setpoint_ua=0, impedance_ohm=0xFFFFFFFF),
            )
    return values


def _variants(cls: type) -> list[tuple[str, dict[str, Any]]]:
    """The typical message, then one change per boundary of every field."""
    base = _typical(cls)
    out: list[tuple[str, dict[str, Any]]] = [("typical", base)]
    for name, codec, _, _ in _fields(cls):
        if isinstance(codec, UInt):
            for label, value in (("min", 0), ("max", codec.max)):
                out.append((f"{name}={label}", {**base, name: value}))
        elif isinstance(codec, EnumU8):
            for member in list(codec.enum)[1:]:
                out.append((f"{name}={member.name}", {**base, name: member}))
        elif isinstance(codec, Text):
            out.append((f"{name}=empty", {**base, name: ""}))
            out.append((f"{name}=32 bytes", {**base, name: "é" * 16}))
        elif isinstance(codec, Records):
            out.append((f"{name}=none", {**base, name: ()}))
            full = tuple(
                ChannelStatus(amplitude_ua=50000 - i, setpoint_ua=0xFFFFFFFF, impedance_ohm=i)
                for i in range(MAX_CHANNELS)
            )
            out.append((f"{name}={MAX_CHANNELS}", {**base, name: full}))
    return out


# --- the reply PROTOCOL.md prescribes for each request -------------------------
#
# The reference unit (section 13): its limits are the typical DEVICE_INFO vector,
# it is IDLE with no session, channel 1 is configured as the typical
# CONFIGURE_CHANNEL vector (12 mA), channel 2 is not, and both electrodes measure
# 2 kOhm. Written from the spec's tables, separately from the simulator, so that
# the simulator's conformance test compares two readings of the spec.

REF = {**_TYPICAL}
REF_TARGETS = {1: 12000}  # configured channels and their target amplitude


def _nack(error: str, field: str = "NONE", channel: int = 0) -> dict[str, Any]:
    return {"type": "NACK", "error": error, "field": field, "channel": channel, "state": "IDLE"}


def _ack() -> dict[str, Any]:
    return {"type": "ACK", "state": "IDLE"}


def reference_reply(m: dict[str, Any]) -> dict[str, Any]:
    kind = m["type"]
    if kind == "HELLO":
        lo, hi = m["min_version"], m["max_version"]
        if lo < 1 or lo > hi:
            return _nack("OUT_OF_RANGE", "VERSION")
        if not lo <= 1 <= hi:
            return _nack("UNSUPPORTED_VERSION", "VERSION")
        return {"type": "DEVICE_INFO", "protocol_version": 1}
    if kind == "CONFIGURE_CHANNEL":
        ch = m["channel"]

        def oor(field: str) -> dict[str, Any]:
            return _nack("OUT_OF_RANGE", field, ch if 1 <= ch <= REF["channel_count"] else 0)

        f, alt, sw = m["frequency_dhz"], m["alt_frequency_dhz"], m["switch_ms"]
        if not 1 <= ch <= REF["channel_count"]:
            return oor("CHANNEL")
        if not REF["frequency_min_dhz"] <= f <= REF["frequency_max_dhz"]:
            return oor("FREQUENCY")
        if not REF["pulse_width_min_us"] <= m["pulse_width_us"] <= REF["pulse_width_max_us"]:
            return oor("PULSE_WIDTH")
        a = m["amplitude_ua"]
        if (
            not REF["amplitude_step_ua"] <= a <= REF["amplitude_max_ua"]
            or a % REF["amplitude_step_ua"]
        ):
            return oor("AMPLITUDE")
        if m["mode"] == "CONTINUOUS":
            if alt:
                return oor("ALT_FREQUENCY")
            if sw:
                return oor("SWITCH_PERIOD")
        elif m["mode"] == "DENSE_DISPERSE":
            if not REF["frequency_min_dhz"] <= alt <= REF["frequency_max_dhz"] or alt == f:
                return oor("ALT_FREQUENCY")
            if not 100 <= sw <= 60_000:
                return oor("SWITCH_PERIOD")
        else:
            if not REF["frequency_min_dhz"] <= alt < f:
                return oor("ALT_FREQUENCY")
            if not 1 <= sw <= 60_000 or sw * alt >= 10_000 or sw * f < 10_000:
                return oor("SWITCH_PERIOD")
        fastest = max(f, alt) if m["mode"] == "DENSE_DISPERSE" else f
        if 2 * m["pulse_width_us"] * fastest >= 10_000_000:
            return oor("PULSE_WIDTH")
        return _ack()
    if kind == "START":
        mask = m["channel_mask"]
        if m["session_id"] == 0:
            return _nack("OUT_OF_RANGE", "SESSION_ID")
        if mask == 0 or mask >> REF["channel_count"]:
            return _nack("OUT_OF_RANGE", "CHANNEL_MASK")
        channels = [n for n in (1, 2) if mask & (1 << (n - 1))]
        for n in channels:
            if n not in REF_TARGETS:
                return _nack("NOT_CONFIGURED", "CHANNEL", n)
        if not REF["dwell_min_ms"] <= m["dwell_ms"] <= REF["dwell_max_ms"]:
            return _nack("OUT_OF_RANGE", "DWELL")
        if not REF["watchdog_min_ms"] <= m["watchdog_ms"] <= REF["watchdog_max_ms"]:
            return _nack("OUT_OF_RANGE", "WATCHDOG")
        if m["ramp_ms"] > REF["ramp_max_ms"] or 2 * m["ramp_ms"] > m["dwell_ms"]:
            return _nack("OUT_OF_RANGE", "RAMP")
        for n in channels:
            if REF_TARGETS[n] * 1000 > REF["slew_max_ua_per_s"] * m["ramp_ms"]:
                return _nack("OUT_OF_RANGE", "RAMP", n)
        return {"type": "ACK", "state": "RAMPING_UP"}
    if kind == "SET_AMPLITUDE":
        return _nack("NO_SESSION", "SESSION_ID")
    if kind == "HEARTBEAT":
        return _ack() if m["session_id"] == 0 else _nack("NO_SESSION", "SESSION_ID")
    if kind in ("STOP", "CLEAR_FAULT"):
        return _ack()
    if kind == "GET_STATUS":
        return {"type": "STATUS", "state": "IDLE"}
    raise ValueError(f"no reference reply for {kind}")


#: requests whose reply shows a rule the boundary variants do not reach
_EXTRA_REQUESTS: dict[MessageType, list[tuple[str, dict[str, Any]]]] = {
    MessageType.HELLO: [
        ("versions 2..5 (no overlap)", {"min_version": 2, "max_version": 5}),
        ("versions 2..2 (no overlap)", {"min_version": 2, "max_version": 2}),
        ("versions 2..1 (malformed before no overlap)", {"min_version": 2, "max_version": 1}),
        ("versions 0..0 (malformed)", {"min_version": 0, "max_version": 0}),
    ],
}


def valid_vectors() -> dict[str, list[dict[str, Any]]]:
    files: dict[str, list[dict[str, Any]]] = {"requests": [], "responses": [], "events": []}
    file_of = {Kind.REQUEST: "requests", Kind.RESPONSE: "responses", Kind.EVENT: "events"}
    for msg_type in MessageType:
        cls = MESSAGE_CLASSES[msg_type]
        extra = [
            (label, {**_typical(cls), **fields_from_json(cls, changes)})
            for label, changes in _EXTRA_REQUESTS.get(msg_type, [])
        ]
        for i, (label, values) in enumerate(_variants(cls) + extra):
            seq = [0x0001, 0x0000, 0xFFFF, 0x1234][i % 4] if i else 0x002A
            message: Message = cls(seq=seq, **values)
            vector: dict[str, Any] = {
                "name": f"{msg_type.name} {label}",
                "direction": DIRECTION[cls.KIND],
                "hex": encode(message).hex(),
                "message": message_to_dict(message),
            }
            if cls.KIND == Kind.REQUEST:
                vector["reply"] = reference_reply(vector["message"])
            files[file_of[cls.KIND]].append(vector)
    return files


# --- invalid vectors ---------------------------------------------------------


def _wire(frame: bytes) -> str:
    return (cobs_encode(frame) + b"\x00").hex()


def _frame(msg_type: int, payload: bytes, **header: int) -> bytes:
    kind = header.pop("kind", int(Kind.REQUEST))
    return build_frame(
        kind=kind, seq=header.pop("seq", 9), msg_type=msg_type, payload=payload, **header
    )


def invalid_vectors() -> list[dict[str, Any]]:
    heartbeat = struct.pack("<I", 0)
    good = _frame(MessageType.HEARTBEAT, heartbeat)
    out: list[dict[str, Any]] = []

    def add(name: str, hex_: str, error: str) -> None:
        out.append(
            {"name": name, "hex": hex_, "error": error, "reply": rejection_reply(hex_, error)}
        )

    # COBS: a code byte that points past the end of the frame
    stuffed = cobs_encode(good)
    add(
        "cobs: block runs past the end",
        (bytes([len(stuffed) + 5]) + stuffed[1:] + b"\x00").hex(),
        "cobs",
    )
    add("cobs: last block one byte short", (stuffed[:-1] + b"\x00").hex(), "cobs")
    # CRC
    flipped = bytearray(good)
    flipped[-1] ^= 0x01
    add("crc: last CRC byte flipped", _wire(bytes(flipped)), "crc")
    flipped = bytearray(good)
    flipped[9] ^= 0x80
    add("crc: payload bit flipped", _wire(bytes(flipped)), "crc")
    add("crc: CRC big-endian", _wire(good[:-4] + good[-4:][::-1]), "crc")
    # length
    add("length: shorter than header + CRC", _wire(good[:11]), "length")
    add("length: empty header", _wire(b"\x01"), "length")
    body = bytearray(good[:-4])
    body[6] = 5  # header says 5, payload is 4; CRC recomputed so only the length is wrong
    add("length: header says 5, payload 4", _wire(_recrc(bytes(body))), "length")
    body = bytearray(good[:-4])
    body[6] = 3
    add("length: header says 3, payload 4", _wire(_recrc(bytes(body))), "length")
    big = bytes(MAX_PAYLOAD + 1)
    add("length: payload of 241 bytes", _wire(_frame(MessageType.HEARTBEAT, big)), "length")
    add("length: 300 bytes without a delimiter", ("01" * 300) + "00", "length")
    # version
    add("version: 0", _wire(_frame(MessageType.HEARTBEAT, heartbeat, version=0)), "version")
    add("version: 2", _wire(_frame(MessageType.HEARTBEAT, heartbeat, version=2)), "version")
    add("version: 255", _wire(_frame(MessageType.HEARTBEAT, heartbeat, version=255)), "version")
    # kind
    for kind in (0, 4, 255):
        add(f"kind: {kind}", _wire(_frame(MessageType.HEARTBEAT, heartbeat, kind=kind)), "kind")
    add(
        "kind: HEARTBEAT sent as a response",
        _wire(_frame(MessageType.HEARTBEAT, heartbeat, kind=2)),
        "kind",
    )
    add("kind: ACK sent as a request", _wire(_frame(MessageType.ACK, b"\x05\x02", kind=1)), "kind")
    add(
        "kind: COMPLETED sent as a response",
        _wire(_frame(MessageType.COMPLETED, bytes(12), kind=2)),
        "kind",
    )
    # a STOP is never lost to a format error (3.4): each of these is ACKed and stops
    stop = struct.pack("<B", 1)
    add("version: STOP in version 2", _wire(_frame(MessageType.STOP, stop, version=2)), "version")
    add("flags: STOP with flags 0x01", _wire(_frame(MessageType.STOP, stop, flags=1)), "flags")
    add("payload: STOP without its reason byte", _wire(_frame(MessageType.STOP, b"")), "payload")
    add("payload: STOP with 2 bytes", _wire(_frame(MessageType.STOP, b"\x01\x01")), "payload")
    body = bytearray(_frame(MessageType.STOP, stop)[:-4])
    body[6] = 2  # the header says 2; the CRC is recomputed, so only the length is wrong
    add("length: STOP whose header says 2, payload 1", _wire(_recrc(bytes(body))), "length")
    # flags
    for flags in (0x01, 0x80):
        add(
            f"flags: 0x{flags:02x}",
            _wire(_frame(MessageType.HEARTBEAT, heartbeat, flags=flags)),
            "flags",
        )
    # type
    for t in (0x00, 0x09, 0x3F, 0x44, 0x89, 0xFF):
        add(f"type: 0x{t:02x}", _wire(_frame(t, b"")), "type")
    # payload
    add(
        "payload: HEARTBEAT 3 bytes",
        _wire(_frame(MessageType.HEARTBEAT, b"\x00\x00\x00")),
        "payload",
    )
    add("payload: HEARTBEAT 5 bytes", _wire(_frame(MessageType.HEARTBEAT, bytes(5))), "payload")
    add(
        "payload: GET_STATUS with 1 byte", _wire(_frame(MessageType.GET_STATUS, b"\x00")), "payload"
    )
    add("payload: START 16 bytes", _wire(_frame(MessageType.START, bytes(16))), "payload")
    configure = bytearray(b"\x01\x00\x00\x00" + struct.pack("<HHIHH", 20, 250, 12000, 0, 0))
    ok = bytes(configure)
    configure[1] = 3
    add(
        "payload: waveform 3",
        _wire(_frame(MessageType.CONFIGURE_CHANNEL, bytes(configure))),
        "payload",
    )
    configure = bytearray(ok)
    configure[2] = 7
    add(
        "payload: mode 7", _wire(_frame(MessageType.CONFIGURE_CHANNEL, bytes(configure))), "payload"
    )
    add("payload: ACK state 5", _wire(_frame(MessageType.ACK, b"\x05\x05", kind=2)), "payload")
    fixed = bytes(44)
    add(
        "payload: DEVICE_INFO string runs past the end",
        _wire(_frame(MessageType.DEVICE_INFO, fixed + b"\x05ab\x00\x00", kind=2)),
        "payload",
    )
    add(
        "payload: DEVICE_INFO string of 33 bytes",
        _wire(_frame(MessageType.DEVICE_INFO, fixed + b"\x21" + b"a" * 33 + b"\x00\x00", kind=2)),
        "payload",
    )
    add(
        "payload: DEVICE_INFO string not UTF-8",
        _wire(_frame(MessageType.DEVICE_INFO, fixed + b"\x01\xff\x00\x00", kind=2)),
        "payload",
    )
    status = b"\x00" + bytes(18)
    add(
        "payload: STATUS with 9 channels",
        _wire(_frame(MessageType.STATUS, status + b"\x09" + bytes(12 * 9), kind=2)),
        "payload",
    )
    add(
        "payload: STATUS channel list short",
        _wire(_frame(MessageType.STATUS, status + b"\x02" + bytes(12), kind=2)),
        "payload",
    )
    return out


def _recrc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


_REJECTION_ERRORS = {
    "version": ("UNSUPPORTED_VERSION", "VERSION"),
    "kind": ("UNKNOWN_TYPE", "NONE"),
    "flags": ("BAD_FLAGS", "NONE"),
    "type": ("UNKNOWN_TYPE", "NONE"),
    "payload": ("BAD_PAYLOAD", "NONE"),
}


def rejection_reply(hex_: str, error: str) -> dict[str, Any] | None:
    """What the reference unit answers to a rejected frame (PROTOCOL.md 3.4): a good-
    CRC STOP of kind 1 is ACKed; another kind-1 frame that fails a check after the
    length is NACKed; everything else is dropped (None). Read from the bytes, as
    a device would, not from the codec's verdict."""
    try:
        frame = cobs_decode(bytes.fromhex(hex_)[:-1])
    except FrameError:
        return None
    body = frame[:-4]
    if len(frame) < 12 or struct.pack("<I", zlib.crc32(body)) != frame[-4:]:
        return None
    _, kind, seq, msg_type, _, _ = struct.unpack_from("<BBHBBH", body)
    request_type = CodeU8(MessageType).to_json(msg_type)
    if kind != Kind.REQUEST:
        return None
    if msg_type == MessageType.STOP:
        return {"type": "ACK", "seq": seq, "request_type": request_type, "state": "IDLE"}
    if error not in _REJECTION_ERRORS:
        return None
    code, field = _REJECTION_ERRORS[error]
    return {
        "type": "NACK",
        "seq": seq,
        "request_type": request_type,
        "error": code,
        "field": field,
        "channel": 0,
        "state": "IDLE",
    }


# --- sequence vectors: rules that take more than one request ------------------
#
# Each sequence starts from a unit that is IDLE with no fault latched and both
# electrodes connected (the reference unit's limits), and leaves it IDLE. Each
# uses its own seq numbers and session ids, so the sequences run one after
# another on one unit without a reset. No time passes on purpose: the watchdog in
# them is 2 s and the ramps 5 s, so nothing acts on its own during a sequence.
# The expectations are written from the spec's text, not read off the simulator.


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

    def send(self, message: Message, *expect: dict[str, Any]) -> Message:
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
        self.steps.append({"hex": _wire(frame), "note": note, "expect": list(expect)})

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


def _configure(channel: int = 1, amplitude_ua: int = 12000) -> ConfigureChannel:
    return ConfigureChannel(
        channel=channel,
        waveform=Waveform.BIPHASIC_SYMMETRIC,
        mode=Mode.CONTINUOUS,
        frequency_dhz=20,
        pulse_width_us=250,
        amplitude_ua=amplitude_ua,
        alt_frequency_dhz=0,
        switch_ms=0,
    )


def _start(session_id: int, channel_mask: int = 1) -> Start:
    return Start(
        session_id=session_id,
        dwell_ms=600_000,
        ramp_ms=5_000,
        watchdog_ms=2_000,
        channel_mask=channel_mask,
    )


def _begin(q: _Sequence, session_id: int, channel_mask: int = 1) -> Start:
    """Configure channel 1 (and 2 if in the mask) and start ``session_id``."""
    for channel in (1, 2):
        if channel_mask & (1 << (channel - 1)):
            m = q.send(_configure(channel))
            q.steps[-1]["expect"] = [_ack_of(m, "IDLE")]
    start = q.send(_start(session_id, channel_mask))
    q.steps[-1]["expect"] = [
        _ack_of(start, "RAMPING_UP"),
        _event(
            "OUTPUT_STARTED", session_id=session_id, dwell_ms=600_000, channel_mask=channel_mask
        ),
    ]
    return start


def _end(q: _Sequence, session_id: int, state: str = "RAMPING_UP") -> None:
    stop = q.send(Stop(reason=StopReason.OPERATOR))
    q.steps[-1]["expect"] = [
        _ack_of(stop, "IDLE"),
        _event("STOPPED", session_id=session_id, reason="OPERATOR"),
    ]


def sequence_vectors() -> list[dict[str, Any]]:
    out: list[_Sequence] = []

    def new(name: str, section: str) -> _Sequence:
        q = _Sequence(len(out), name, section)
        out.append(q)
        return q

    # 3.4 and 8.4: a STOP is never lost to a format error, and is ACKed
    for label, frame_of in (
        ("without its reason byte", lambda seq: _frame(MessageType.STOP, b"", seq=seq)),
        ("with flags 0x01", lambda seq: _frame(MessageType.STOP, b"\x01", seq=seq, flags=1)),
        ("in a version-2 frame", lambda seq: _frame(MessageType.STOP, b"\x01", seq=seq, version=2)),
    ):
        q = new(f"a STOP {label} while output is on: ACK, output off, STOPPED reason 0", "3.4")
        _begin(q, q.session)
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
        _frame(MessageType.STOP, b"\x01", seq=seq, flags=1),
        {"type": "ACK", "seq": seq, "request_type": "STOP", "state": "IDLE"},
    )

    q = new("frames of any kind but 1 are never answered", "3.4")
    for kind in (0, 2, 3, 4, 255):
        seq = q.take_seq()
        q.send_raw(
            f"HEARTBEAT payload in a frame of kind {kind}",
            _frame(MessageType.HEARTBEAT, bytes(4), kind=kind, seq=seq),
        )
    seq = q.take_seq()
    q.send_raw(
        "a request whose header says 5 payload bytes for 4 (CRC good): dropped",
        _recrc(_frame(MessageType.HEARTBEAT, bytes(4), seq=seq)[:6] + b"\x05\x00" + bytes(4)),
    )

    # 10: duplicates
    q = new("a copy of the live session's START: ACK with the state now, no effect", "10")
    start = _begin(q, q.session)
    q.steps.append({**q.steps[-1], "expect": [_ack_of(start, "RAMPING_UP")]})
    _end(q, q.session)
    q.steps.append(
        {
            **q.steps[-3],
            "expect": [_nack_of(start, "SESSION_ENDED", "SESSION_ID", 0, "IDLE")],
        }
    )

    q = new("a copy of a remembered SET_AMPLITUDE after its session ended: ACK, state IDLE", "10")
    _begin(q, q.session)
    change = q.send(SetAmplitude(session_id=q.session, channel=1, amplitude_ua=10_000))
    q.steps[-1]["expect"] = [_ack_of(change, "RAMPING_UP")]
    _end(q, q.session)
    q.steps.append({**q.steps[-2], "expect": [_ack_of(change, "IDLE")]})

    q = new("a copy of a remembered CONFIGURE_CHANNEL is not carried out again", "10")
    first = q.send(_configure(1, 12_000))
    q.steps[-1]["expect"] = [_ack_of(first, "IDLE")]
    second = q.send(_configure(1, 10_000))
    q.steps[-1]["expect"] = [_ack_of(second, "IDLE")]
    q.steps.append({**q.steps[-2], "expect": [_ack_of(first, "IDLE")]})
    start = q.send(_start(q.session))
    q.steps[-1]["expect"] = [
        _ack_of(start, "RAMPING_UP"),
        _event("OUTPUT_STARTED", session_id=q.session, dwell_ms=600_000, channel_mask=1),
    ]
    status = q.send(GetStatus())
    q.steps[-1]["expect"] = [
        {
            "type": "STATUS",
            "seq": status.seq,
            "state": "RAMPING_UP",
            "session_id": q.session,
            "channels": [{"setpoint_ua": 10_000}, {"setpoint_ua": 0, "amplitude_ua": 0}],
        }
    ]
    _end(q, q.session)

    q = new("a copy of a STOP always acts, even on a later session", "10")
    _begin(q, q.session)
    stop = q.send(Stop(reason=StopReason.OPERATOR))
    q.steps[-1]["expect"] = [
        _ack_of(stop, "IDLE"),
        _event("STOPPED", session_id=q.session, reason="OPERATOR"),
    ]
    stop_step = q.steps[-1]
    later = q.session + 1
    start = q.send(_start(later))
    q.steps[-1]["expect"] = [
        _ack_of(start, "RAMPING_UP"),
        _event("OUTPUT_STARTED", session_id=later, dwell_ms=600_000, channel_mask=1),
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

    # 6.1 and 5.3: what a running unit answers
    q = new("HEARTBEATs while output is on: the live session, 0, another session", "6.1")
    _begin(q, q.session)
    beat = q.send(Heartbeat(session_id=q.session))
    q.steps[-1]["expect"] = [_ack_of(beat, "RAMPING_UP")]
    beat = q.send(Heartbeat(session_id=0))
    q.steps[-1]["expect"] = [_ack_of(beat, "RAMPING_UP")]
    beat = q.send(Heartbeat(session_id=q.session + 1))
    q.steps[-1]["expect"] = [_nack_of(beat, "NO_SESSION", "SESSION_ID", 0, "RAMPING_UP")]
    _end(q, q.session)

    q = new("refusals while output is on name their field and channel", "5.3")
    _begin(q, q.session)
    for channel, amplitude, field, named in (
        (2, 10_000, "CHANNEL", 2),  # a channel of the unit, not of the session
        (9, 10_000, "CHANNEL", 0),  # not a channel of the unit
        (1, 10_050, "AMPLITUDE", 1),  # off the unit's 0.1 mA step
        (1, 50_100, "AMPLITUDE", 1),  # above the unit's maximum
    ):
        m = q.send(SetAmplitude(session_id=q.session, channel=channel, amplitude_ua=amplitude))
        q.steps[-1]["expect"] = [_nack_of(m, "OUT_OF_RANGE", field, named, "RAMPING_UP")]
    m = q.send(_start(q.session + 1))
    q.steps[-1]["expect"] = [_nack_of(m, "BAD_STATE", "NONE", 0, "RAMPING_UP")]
    m = q.send(_configure(2))
    q.steps[-1]["expect"] = [_nack_of(m, "BAD_STATE", "NONE", 0, "RAMPING_UP")]
    _end(q, q.session)

    q = new("STATUS reports impedance only for channels delivering output", "5.2")
    m = q.send(GetStatus())
    unknown = 0xFFFFFFFF
    q.steps[-1]["expect"] = [
        {
            "type": "STATUS",
            "seq": m.seq,
            "state": "IDLE",
            "channels": [{"impedance_ohm": unknown}, {"impedance_ohm": unknown}],
        }
    ]
    _begin(q, q.session)
    m = q.send(GetStatus())
    q.steps[-1]["expect"] = [
        {
            "type": "STATUS",
            "seq": m.seq,
            "state": "RAMPING_UP",
            "session_id": q.session,
            "channels": [{"impedance_ohm": {"not": unknown}}, {"impedance_ohm": unknown}],
        }
    ]
    _end(q, q.session)
    return [q.vector() for q in out]


# --- PROTOCOL.md tables ------------------------------------------------------


def _range(codec: Codec[Any]) -> str:
    if isinstance(codec, CodeU8):
        return "0..255, see section 8"
    if isinstance(codec, UInt):
        return f"0..{codec.max}"
    if isinstance(codec, EnumU8):
        return ", ".join(f"{m.value} {m.name}" for m in codec.enum)
    return ""


def message_tables() -> str:
    lines: list[str] = []
    for msg_type in MessageType:
        cls = MESSAGE_CLASSES[msg_type]
        size = _payload_size(cls)
        lines.append(f"#### 0x{msg_type.value:02X} {msg_type.name} ({Kind(cls.KIND).name.lower()})")
        lines.append("")
        lines.append((cls.__doc__ or "").strip().splitlines()[0])
        lines.append("")
        lines.append(f"Payload: {size}.")
        lines.append("")
        fields = _fields(cls)
        if not fields:
            lines.append("No fields.")
            lines.append("")
            continue
        lines.append("| offset | field | type | unit | wire range | meaning |")
        lines.append("|---|---|---|---|---|---|")
        offset: int | None = 0
        for name, codec, unit, doc in fields:
            where = "follows" if offset is None else str(offset)
            lines.append(
                f"| {where} | `{name}` | {codec.wire_name} | {unit} | {_range(codec)} | {doc} |"
            )
            offset = None if offset is None or codec.size is None else offset + codec.size
        lines.append("")
    lines.append("#### ChannelStatus (the repeated record in STATUS)")
    lines.append("")
    lines.append("| offset | field | type | unit | wire range | meaning |")
    lines.append("|---|---|---|---|---|---|")
    offset = 0
    for name, codec, unit, doc in _fields(ChannelStatus):
        lines.append(
            f"| {offset} | `{name}` | {codec.wire_name} | {unit} | {_range(codec)} | {doc} |"
        )
        offset += codec.size or 0
    lines.append("")
    return "\n".join(lines)


def code_fields() -> str:
    """Which one-byte enumerations the decoder checks, read off the codec."""
    checked: dict[str, list[str]] = {}
    unchecked: dict[str, list[str]] = {}
    for msg_type in MessageType:
        cls = MESSAGE_CLASSES[msg_type]
        for name, codec, _, _ in _fields(cls):
            where = f"{msg_type.name}.`{name}`"
            if isinstance(codec, CodeU8):
                unchecked.setdefault(codec.enum.__name__, []).append(where)
            elif isinstance(codec, EnumU8):
                checked.setdefault(codec.enum.__name__, []).append(where)
    lines = [
        "- **Checked enumerations**: a value outside the list is rejected (reason `payload`).",
    ]
    lines += [f"  - {enum}: {', '.join(places)}" for enum, places in sorted(checked.items())]
    lines.append(
        "- **Codes**: any value 0..255 is accepted by the decoder and MUST be acted on "
        "as this spec says, known or not (section 8 lists the known ones)."
    )
    lines += [f"  - {enum}: {', '.join(places)}" for enum, places in sorted(unchecked.items())]
    return "\n".join(lines) + "\n"


def _payload_size(cls: type) -> str:
    sizes = [codec.size for _, codec, _, _ in _fields(cls)]
    fixed = sum(size for size in sizes if size is not None)
    variable = None in sizes
    if not fixed and not variable:
        return "0 bytes"
    return f"{fixed} bytes" + (" + the variable-length fields" if variable else "")


def worked_examples() -> str:
    from estim.protocol import (
        Ack,
        Completed,
        DeviceInfo,
        ErrorCode,
        Field,
        Hello,
        Nack,
        Start,
        State,
    )

    info_values = _typical(DeviceInfo)
    examples: list[tuple[str, Message]] = [
        (
            "The host says HELLO (seq 0), speaking versions 1..1",
            Hello(seq=0, min_version=1, max_version=1),
        ),
        ("The unit answers DEVICE_INFO (seq 0)", DeviceInfo(seq=0, **info_values)),
        (
            "START session 0x5E551011, dwell 8 min, ramp 5 s, watchdog 500 ms, channel 1",
            Start(
                seq=3,
                session_id=0x5E551011,
                dwell_ms=480000,
                ramp_ms=5000,
                watchdog_ms=500,
                channel_mask=1,
            ),
        ),
        (
            "The unit accepts it: ACK, state RAMPING_UP",
            Ack(seq=3, request_type=0x03, state=State.RAMPING_UP),
        ),
        (
            "A START with a dwell of 601 s is refused: NACK OUT_OF_RANGE, field DWELL",
            Nack(
                seq=4,
                request_type=0x03,
                error=ErrorCode.OUT_OF_RANGE,
                field=Field.DWELL,
                channel=0,
                state=State.IDLE,
            ),
        ),
        (
            "Event 7: the session completed at device time 603,000 ms after 480,000 ms of output",
            Completed(seq=7, session_id=0x5E551011, time_ms=603000, delivered_ms=480000),
        ),
    ]
    lines: list[str] = []
    for title, message in examples:
        payload = encode_payload(message)
        frame = build_frame(
            kind=message.KIND, seq=message.seq, msg_type=message.TYPE, payload=payload
        )
        wire = encode(message)
        lines += [
            f"**{title}.**",
            "",
            "```",
            f"header  {frame[:8].hex(' ')}",
            f"        version 1, kind {int(message.KIND)}, seq {message.seq}, "
            f"type 0x{int(message.TYPE):02x}, flags 0, length {len(payload)}",
            f"payload {payload.hex(' ') or '(none)'}",
            f"crc32   {frame[-4:].hex(' ')}  (0x{int.from_bytes(frame[-4:], 'little'):08x}, little-endian)",
            f"wire    {wire.hex(' ')}",
            "```",
            "",
        ]
    return "\n".join(lines)


def render_spec(text: str) -> str:
    sections = (
        ("message tables", message_tables),
        ("worked examples", worked_examples),
        ("code fields", code_fields),
    )
    for section, body in sections:
        begin, end = _markers(section)
        head, found, rest = text.partition(begin)
        if not found or end not in rest:
            raise SystemExit(f"{SPEC} lacks the markers for {section!r}")
        _, _, tail = rest.partition(end)
        text = f"{head}{begin}\n\n{body()}\n{end}{tail}"
    return text


def expected_files() -> dict[Path, str]:
    files = {VECTORS / f"{name}.json": _dump(vectors) for name, vectors in valid_vectors().items()}
    files[VECTORS / "invalid.json"] = _dump(invalid_vectors())
    files[VECTORS / "sequences.json"] = _dump(sequence_vectors())
    files[SPEC] = render_spec(SPEC.read_text(encoding="utf-8"))
    return files


def _dump(data: Any) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="report differences, change nothing")
    args = parser.parse_args()
    stale = [
        p
        for p, text in expected_files().items()
        if not p.exists() or p.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for p in stale:
            print(f"out of date: {p.relative_to(HERE.parent)}")
        return 1 if stale else 0
    VECTORS.mkdir(exist_ok=True)
    for p, text in expected_files().items():
        p.write_text(text, encoding="utf-8")
    print(f"wrote {len(stale)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
