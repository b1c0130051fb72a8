"""Consistent Overhead Byte Stuffing (Cheshire and Baker, 1999).

COBS removes every 0x00 from a frame so that 0x00 can mark the end of a frame on
the wire. The overhead is one byte per 254 bytes of data, at most.
"""

from __future__ import annotations

from estim.errors import FrameError

_BLOCK = 254


def cobs_encode(data: bytes) -> bytes:
    """Encode ``data``; the result contains no 0x00 byte."""
    out = bytearray()
    for chunk in bytes(data).split(b"\x00"):
        while len(chunk) >= _BLOCK:
            out.append(0xFF)
            out += chunk[:_BLOCK]
            chunk = chunk[_BLOCK:]
        out.append(len(chunk) + 1)
        out += chunk
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Decode one COBS block sequence (without its 0x00 delimiter).

    Raises ``FrameError("cobs")`` for input that no encoder could have produced.
    """
    if not data:
        raise FrameError("cobs", "empty frame")
    if 0 in data:
        raise FrameError("cobs", "0x00 inside a frame")
    out = bytearray()
    i, n = 0, len(data)
    while True:
        code = data[i]
        end = i + code
        if end > n:
            raise FrameError("cobs", f"block at byte {i} runs past the end of the frame")
        out += data[i + 1 : end]
        if end == n:
            return bytes(out)
        if code != 0xFF:
            out.append(0)
        i = end
