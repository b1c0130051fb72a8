"""Frames: header, payload and CRC-32, COBS-stuffed and ended by 0x00.

Pure functions and one buffering ``Decoder``; no I/O, no threads, no clock (time,
where needed, is passed in). Both the host and the device side use this module.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, NoReturn

from estim.errors import FrameError, LocalProtocolError

from .cobs import cobs_decode, cobs_encode
from .constants import (
    CRC_SIZE,
    HEADER_SIZE,
    INTER_BYTE_GAP_S,
    MAX_ENCODED,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Kind,
    MessageType,
)
from .fields import decode_fields, encode_fields, fields_from_json, fields_to_json
from .messages import MESSAGE_CLASSES, Message

_HEADER = struct.Struct("<BBHBBH")
_CRC = struct.Struct("<I")


def encode_payload(message: Message) -> bytes:
    payload = encode_fields(message)
    if len(payload) > MAX_PAYLOAD:
        raise LocalProtocolError(
            f"{message.TYPE.name} payload is {len(payload)} bytes; at most {MAX_PAYLOAD}"
        )
    return payload


def build_frame(
    *,
    kind: int,
    seq: int,
    msg_type: int,
    payload: bytes,
    version: int = PROTOCOL_VERSION,
    flags: int = 0,
) -> bytes:
    """Header + payload + CRC-32, before COBS. Exposed for tests and tools."""
    header = _HEADER.pack(version, kind, seq, msg_type, flags, len(payload))
    body = header + payload
    return body + _CRC.pack(zlib.crc32(body))


def encode(message: Message) -> bytes:
    """The bytes on the wire for ``message``, trailing 0x00 included."""
    if not 0 <= message.seq <= 0xFFFF:
        raise LocalProtocolError(f"seq={message.seq} does not fit u16 (0..65535)")
    return encode_with_payload(message.KIND, message.seq, message.TYPE, encode_payload(message))


def encode_with_payload(kind: int, seq: int, msg_type: int, payload: bytes) -> bytes:
    """The wire bytes of a frame whose payload is already encoded.

    A payload does not depend on seq, so the host keeps the payloads it sends
    again and again (each HEARTBEAT of a session) and runs only this per frame:
    few calls matter, because the I/O thread runs it cold, after sleeping a period
    (bench/PROFILE.md section 7: 578 -> 529 us of CPU per heartbeat period, A/B).
    ``build_frame`` is the same frame for tools that also set version and flags."""
    body = _HEADER.pack(PROTOCOL_VERSION, kind, seq, msg_type, 0, len(payload)) + payload
    return cobs_encode(body + _CRC.pack(zlib.crc32(body))) + b"\x00"


def decode(wire: bytes) -> Message:
    """Decode exactly one frame (with or without its trailing 0x00).

    Raises ``FrameError`` with the rejection reason of PROTOCOL.md section 3.4.
    """
    if wire.endswith(b"\x00"):
        wire = wire[:-1]
    if len(wire) > MAX_ENCODED:
        raise FrameError("length", f"{len(wire)} encoded bytes; at most {MAX_ENCODED}")
    return decode_frame(cobs_decode(wire))


def decode_frame(frame: bytes) -> Message:
    """Decode one un-stuffed frame: header, payload, CRC."""
    if len(frame) < HEADER_SIZE + CRC_SIZE:
        raise FrameError("length", f"{len(frame)} bytes is shorter than header + CRC")
    body, (crc,) = frame[:-CRC_SIZE], struct.unpack("<I", frame[-CRC_SIZE:])
    if zlib.crc32(body) != crc:
        raise FrameError("crc")
    version, kind, seq, msg_type, flags, length = _HEADER.unpack_from(body)
    header = {"seq": seq, "kind": kind, "msg_type": msg_type}
    payload = body[HEADER_SIZE:]
    if length != len(payload) or length > MAX_PAYLOAD:
        raise FrameError("length", f"header says {length}, payload is {len(payload)}", **header)
    if version != PROTOCOL_VERSION:
        raise FrameError("version", f"version {version}; this codec speaks 1", **header)
    if kind not in Kind._value2member_map_:
        raise FrameError("kind", f"kind {kind} is not 1, 2 or 3", **header)
    if flags != 0:
        raise FrameError("flags", f"flags 0x{flags:02x}; v1 defines none", **header)
    try:
        cls = MESSAGE_CLASSES[MessageType(msg_type)]
    except ValueError:
        raise FrameError("type", f"unknown message type 0x{msg_type:02x}", **header) from None
    if kind != cls.KIND:
        raise FrameError(
            "kind", f"{cls.TYPE.name} must be kind {int(cls.KIND)}, got {kind}", **header
        )
    try:
        values, end = decode_fields(cls, payload, 0)
    except FrameError as err:
        raise FrameError("payload", err.detail, **header) from None
    if end != len(payload):
        raise FrameError(
            "payload", f"{cls.TYPE.name} payload has {len(payload) - end} extra bytes", **header
        )
    return cls(seq=seq, **values)


class Decoder:
    """Turns a byte stream into messages; keeps partial input between calls.

    ``feed(data, now)`` returns the messages completed by ``data``. Frames that are
    rejected are not returned: they are counted in ``rejected`` and the last one
    is kept in ``last_error``; a device that wants to NACK them uses
    ``receive`` + ``next_message``, which raise ``FrameError`` one frame at a time.

    ``now`` (seconds, any monotonic origin) enables the inter-byte gap rule: a
    partial frame whose next byte comes ``gap_s`` or more after its last one is
    dropped (PROTOCOL.md 9). ``now`` and ``gap_s`` may be in any one unit: the
    simulated unit counts whole microseconds, so that 50 ms is exact.
    """

    def __init__(self, *, gap_s: float = INTER_BYTE_GAP_S) -> None:
        self.gap_s = gap_s
        self.rejected = 0
        self.decoded = 0
        self.last_error: FrameError | None = None
        self._partial = bytearray()
        self._complete: list[bytes] = []
        self._pending_errors: list[FrameError] = []
        self._overflow = False
        self._last_byte: float | None = None

    @property
    def buffered(self) -> int:
        """Bytes of a partial frame held back, waiting for its delimiter."""
        return len(self._partial)

    def receive(self, data: bytes, now: float | None = None) -> None:
        """Buffer ``data``; complete frames wait for ``next_message``."""
        if not data:
            return
        if now is not None:
            if (
                self._last_byte is not None
                and (self._partial or self._overflow)
                and now - self._last_byte >= self.gap_s
            ):
                silence = f"silence of {now - self._last_byte:g} (the gap is {self.gap_s:g})"
                self._drop_partial(FrameError("gap", silence))
            self._last_byte = now
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                self._append(data[start:])
                return
            self._append(data[start:end])
            if self._overflow:
                self._overflow = False
            elif self._partial:
                self._complete.append(bytes(self._partial))
            self._partial.clear()
            start = end + 1

    def _append(self, chunk: bytes) -> None:
        if self._overflow or not chunk:
            return
        self._partial += chunk
        if len(self._partial) > MAX_ENCODED:
            self._drop_partial(FrameError("length", f"no delimiter within {MAX_ENCODED} bytes"))
            self._overflow = True

    def _drop_partial(self, error: FrameError) -> None:
        self._partial.clear()
        self._overflow = False
        self._pending_errors.append(error)

    def next_message(self) -> Message | None:
        """The next complete message, or None if more bytes are needed.

        Raises ``FrameError`` for a rejected frame; call again for the next one.
        """
        if self._pending_errors:
            self._reject(self._pending_errors.pop(0))
        if not self._complete:
            return None
        try:
            message = decode_frame(cobs_decode(self._complete.pop(0)))
        except FrameError as err:
            self._reject(err)
        self.decoded += 1
        return message

    def _reject(self, err: FrameError) -> NoReturn:
        self.rejected += 1
        self.last_error = err
        raise err

    def feed(self, data: bytes, now: float | None = None) -> list[Message]:
        """Buffer ``data`` and return every message it completes, in order."""
        self.receive(data, now)
        out: list[Message] = []
        while True:
            try:
                message = self.next_message()
            except FrameError:
                continue
            if message is None:
                return out
            out.append(message)


def message_to_dict(message: Message) -> dict[str, Any]:
    """JSON form used by the golden vectors: type name, seq, then the fields."""
    return {"type": message.TYPE.name, "seq": message.seq, **fields_to_json(message)}


def message_from_dict(data: dict[str, Any]) -> Message:
    body = dict(data)
    try:
        cls = MESSAGE_CLASSES[MessageType[body.pop("type")]]
    except KeyError as err:
        raise LocalProtocolError(f"unknown message type {err}") from None
    seq = body.pop("seq", 0)
    return cls(seq=seq, **fields_from_json(cls, body))
