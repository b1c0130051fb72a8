"""The golden vectors of ``firmware_protocol/vectors/``, built from the codec: valid
frames of every message type (each request with the reference unit's reply),
and frames a receiver must reject (with what a unit answers to each).

Pure functions; ``firmware_protocol/generate.py`` writes their output to the JSON
files, and ``estim conformance`` sends the same frames to a unit.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from estim.protocol import (
    MAX_CHANNELS,
    MAX_PAYLOAD,
    MESSAGE_CLASSES,
    ChannelStatus,
    FrameError,
    Kind,
    Message,
    MessageType,
    build_frame,
    cobs_decode,
    cobs_encode,
    encode,
    message_to_dict,
)
from estim.protocol.fields import CodeU8, EnumU8, Records, Text, UInt, fields_from_json

from .replies import reference_reply
from .typical import message_fields, typical

DIRECTION = {
    Kind.REQUEST: "host_to_device",
    Kind.RESPONSE: "device_to_host",
    Kind.EVENT: "device_to_host",
}


def _variants(cls: type) -> list[tuple[str, dict[str, Any]]]:
    """The typical message, then one change per boundary of every field."""
    base = typical(cls)
    out: list[tuple[str, dict[str, Any]]] = [("typical", base)]
    for name, codec, _, _ in message_fields(cls):
        if isinstance(codec, UInt):
            for label, value in (("min", 0), ("max", codec.max)):
                out.append((f"{name}={label}", {**base, name: value}))
        elif isinstance(codec, EnumU8):
            for member in list(codec.enum.__members__.values())[1:]:
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
    """``requests``, ``responses`` and ``events``: every message type, every field's
    bounds; each request with ``reply``, the reference unit's answer (13)."""
    files: dict[str, list[dict[str, Any]]] = {"requests": [], "responses": [], "events": []}
    file_of = {Kind.REQUEST: "requests", Kind.RESPONSE: "responses", Kind.EVENT: "events"}
    for msg_type in MessageType:
        cls = MESSAGE_CLASSES[msg_type]
        extra = [
            (label, {**typical(cls), **fields_from_json(cls, changes)})
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


def wire(frame: bytes) -> str:
    """A frame (before COBS) as the hex of its bytes on the wire."""
    return (cobs_encode(frame) + b"\x00").hex()


def raw_frame(msg_type: int, payload: bytes, **header: int) -> bytes:
    """Header + payload + CRC, with any header field forced (a request, seq 9, unless told)."""
    kind = header.pop("kind", int(Kind.REQUEST))
    return build_frame(
        kind=kind, seq=header.pop("seq", 9), msg_type=msg_type, payload=payload, **header
    )


def recrc(body: bytes) -> bytes:
    """``body`` (header + payload) with its CRC appended."""
    return body + struct.pack("<I", zlib.crc32(body))


def invalid_vectors() -> list[dict[str, Any]]:
    """Frames a receiver must reject: ``{"name", "hex", "error", "reply"}`` (3.4)."""
    heartbeat = struct.pack("<I", 0)
    good = raw_frame(MessageType.HEARTBEAT, heartbeat)
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
    add("crc: last CRC byte flipped", wire(bytes(flipped)), "crc")
    flipped = bytearray(good)
    flipped[9] ^= 0x80
    add("crc: payload bit flipped", wire(bytes(flipped)), "crc")
    add("crc: CRC big-endian", wire(good[:-4] + good[-4:][::-1]), "crc")
    # length
    add("length: shorter than header + CRC", wire(good[:11]), "length")
    add("length: empty header", wire(b"\x01"), "length")
    body = bytearray(good[:-4])
    body[6] = 5  # header says 5, payload is 4; CRC recomputed so only the length is wrong
    add("length: header says 5, payload 4", wire(recrc(bytes(body))), "length")
    body = bytearray(good[:-4])
    body[6] = 3
    add("length: header says 3, payload 4", wire(recrc(bytes(body))), "length")
    big = bytes(MAX_PAYLOAD + 1)
    add("length: payload of 241 bytes", wire(raw_frame(MessageType.HEARTBEAT, big)), "length")
    add("length: 300 bytes without a delimiter", ("01" * 300) + "00", "length")
    # version
    add("version: 0", wire(raw_frame(MessageType.HEARTBEAT, heartbeat, version=0)), "version")
    add("version: 2", wire(raw_frame(MessageType.HEARTBEAT, heartbeat, version=2)), "version")
    add("version: 255", wire(raw_frame(MessageType.HEARTBEAT, heartbeat, version=255)), "version")
    # kind
    for kind in (0, 4, 255):
        add(f"kind: {kind}", wire(raw_frame(MessageType.HEARTBEAT, heartbeat, kind=kind)), "kind")
    add(
        "kind: HEARTBEAT sent as a response",
        wire(raw_frame(MessageType.HEARTBEAT, heartbeat, kind=2)),
        "kind",
    )
    add(
        "kind: ACK sent as a request", wire(raw_frame(MessageType.ACK, b"\x05\x02", kind=1)), "kind"
    )
    add(
        "kind: COMPLETED sent as a response",
        wire(raw_frame(MessageType.COMPLETED, bytes(12), kind=2)),
        "kind",
    )
    # a STOP is never lost to a format error (3.4): each of these is ACKed and stops
    stop = struct.pack("<B", 1)
    add("version: STOP in version 2", wire(raw_frame(MessageType.STOP, stop, version=2)), "version")
    add("flags: STOP with flags 0x01", wire(raw_frame(MessageType.STOP, stop, flags=1)), "flags")
    add("payload: STOP without its reason byte", wire(raw_frame(MessageType.STOP, b"")), "payload")
    add("payload: STOP with 2 bytes", wire(raw_frame(MessageType.STOP, b"\x01\x01")), "payload")
    body = bytearray(raw_frame(MessageType.STOP, stop)[:-4])
    body[6] = 2  # the header says 2; the CRC is recomputed, so only the length is wrong
    add("length: STOP whose header says 2, payload 1", wire(recrc(bytes(body))), "length")
    # flags
    for flags in (0x01, 0x80):
        add(
            f"flags: 0x{flags:02x}",
            wire(raw_frame(MessageType.HEARTBEAT, heartbeat, flags=flags)),
            "flags",
        )
    # type
    for t in (0x00, 0x09, 0x3F, 0x44, 0x89, 0xFF):
        add(f"type: 0x{t:02x}", wire(raw_frame(t, b"")), "type")
    # payload
    add(
        "payload: HEARTBEAT 3 bytes",
        wire(raw_frame(MessageType.HEARTBEAT, b"\x00\x00\x00")),
        "payload",
    )
    add("payload: HEARTBEAT 5 bytes", wire(raw_frame(MessageType.HEARTBEAT, bytes(5))), "payload")
    add(
        "payload: GET_STATUS with 1 byte",
        wire(raw_frame(MessageType.GET_STATUS, b"\x00")),
        "payload",
    )
    add("payload: START 16 bytes", wire(raw_frame(MessageType.START, bytes(16))), "payload")
    configure = bytearray(b"\x01\x00\x00\x00" + struct.pack("<HHIHH", 20, 250, 12000, 0, 0))
    ok = bytes(configure)
    configure[1] = 3
    add(
        "payload: waveform 3",
        wire(raw_frame(MessageType.CONFIGURE_CHANNEL, bytes(configure))),
        "payload",
    )
    configure = bytearray(ok)
    configure[2] = 7
    add(
        "payload: mode 7",
        wire(raw_frame(MessageType.CONFIGURE_CHANNEL, bytes(configure))),
        "payload",
    )
    add("payload: ACK state 5", wire(raw_frame(MessageType.ACK, b"\x05\x05", kind=2)), "payload")
    fixed = bytes(44)
    add(
        "payload: DEVICE_INFO string runs past the end",
        wire(raw_frame(MessageType.DEVICE_INFO, fixed + b"\x05ab\x00\x00", kind=2)),
        "payload",
    )
    add(
        "payload: DEVICE_INFO string of 33 bytes",
        wire(raw_frame(MessageType.DEVICE_INFO, fixed + b"\x21" + b"a" * 33 + b"\x00\x00", kind=2)),
        "payload",
    )
    add(
        "payload: DEVICE_INFO string not UTF-8",
        wire(raw_frame(MessageType.DEVICE_INFO, fixed + b"\x01\xff\x00\x00", kind=2)),
        "payload",
    )
    status = b"\x00" + bytes(18)
    add(
        "payload: STATUS with 9 channels",
        wire(raw_frame(MessageType.STATUS, status + b"\x09" + bytes(12 * 9), kind=2)),
        "payload",
    )
    add(
        "payload: STATUS channel list short",
        wire(raw_frame(MessageType.STATUS, status + b"\x02" + bytes(12), kind=2)),
        "payload",
    )
    return out


_REJECTION_ERRORS = {
    "version": ("UNSUPPORTED_VERSION", "VERSION"),
    "kind": ("UNKNOWN_TYPE", "NONE"),
    "flags": ("BAD_FLAGS", "NONE"),
    "type": ("UNKNOWN_TYPE", "NONE"),
    "payload": ("BAD_PAYLOAD", "NONE"),
}


def rejection_reply(hex_: str, error: str, state: str = "IDLE") -> dict[str, Any] | None:
    """What a unit in ``state`` answers to a rejected frame (PROTOCOL.md 3.4): a good-
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
        after = "FAULT" if state == "FAULT" else "IDLE"
        return {"type": "ACK", "seq": seq, "request_type": request_type, "state": after}
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
        "state": state,
    }
