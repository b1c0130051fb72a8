"""Wire encodings of single fields: little-endian integers, enums, strings, lists.

Each codec checks a value before encoding it (``LocalProtocolError``) and checks
what it decodes (``FrameError("payload")``), so nothing out of its type's range
crosses the wire in either direction.
"""

from __future__ import annotations

import struct
from dataclasses import fields as dataclass_fields
from enum import IntEnum
from typing import Any, Generic, TypeVar

from estim.errors import FrameError, LocalProtocolError

from .constants import MAX_STRING

T = TypeVar("T")
E = TypeVar("E", bound=IntEnum)


class Codec(Generic[T]):
    """How one field is laid out on the wire."""

    #: name used in PROTOCOL.md's field tables
    wire_name = ""
    #: bytes on the wire, or None when the length varies
    size: int | None = None

    def encode(self, name: str, value: T) -> bytes:
        raise NotImplementedError

    def decode(self, name: str, data: bytes, offset: int) -> tuple[T, int]:
        raise NotImplementedError

    def to_json(self, value: T) -> Any:
        return value

    def from_json(self, value: Any) -> T:
        return value  # type: ignore[no-any-return]


class UInt(Codec[int]):
    def __init__(self, size: int) -> None:
        self.size = self.nbytes = size
        self.fmt = {1: "<B", 2: "<H", 4: "<I"}[size]
        self.max = (1 << (8 * size)) - 1
        self.wire_name = f"u{8 * size}"

    def encode(self, name: str, value: int) -> bytes:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LocalProtocolError(f"{name} must be an integer, got {value!r}")
        if not 0 <= value <= self.max:
            raise LocalProtocolError(
                f"{name}={value} does not fit {self.wire_name} (0..{self.max})"
            )
        return struct.pack(self.fmt, value)

    def decode(self, name: str, data: bytes, offset: int) -> tuple[int, int]:
        end = offset + self.nbytes
        if end > len(data):
            raise FrameError("payload", f"{name}: payload too short")
        (value,) = struct.unpack_from(self.fmt, data, offset)
        return int(value), end


U8 = UInt(1)
U16 = UInt(2)
U32 = UInt(4)


class EnumU8(Codec[E]):
    """A u8 that must be one of an enum's values."""

    def __init__(self, enum: type[E]) -> None:
        self.enum = enum
        self.size = 1
        self.wire_name = f"u8 ({enum.__name__})"

    def encode(self, name: str, value: E) -> bytes:
        try:
            member = self.enum(value)
        except ValueError:
            raise LocalProtocolError(f"{name}={value!r} is not a {self.enum.__name__}") from None
        return bytes([int(member)])

    def decode(self, name: str, data: bytes, offset: int) -> tuple[E, int]:
        if offset >= len(data):
            raise FrameError("payload", f"{name}: payload too short")
        try:
            return self.enum(data[offset]), offset + 1
        except ValueError:
            raise FrameError(
                "payload", f"{name}={data[offset]} is not a {self.enum.__name__}"
            ) from None

    def to_json(self, value: E) -> Any:
        return self.enum(value).name

    def from_json(self, value: Any) -> E:
        return self.enum[value] if isinstance(value, str) else self.enum(value)


class CodeU8(UInt):
    """A u8 code from an enum, not checked on decode: a receiver must act on codes it
    does not know (a STOP with an unknown reason still stops). JSON uses the name."""

    def __init__(self, enum: type[IntEnum]) -> None:
        super().__init__(1)
        self.enum = enum
        self.wire_name = f"u8 ({enum.__name__})"

    def to_json(self, value: int) -> Any:
        try:
            return self.enum(value).name
        except ValueError:
            return value

    def from_json(self, value: Any) -> int:
        return int(self.enum[value]) if isinstance(value, str) else int(value)


class Text(Codec[str]):
    """u8 byte count, then that many bytes of UTF-8 (at most MAX_STRING)."""

    wire_name = f"str (u8 length + UTF-8, at most {MAX_STRING} bytes)"

    def encode(self, name: str, value: str) -> bytes:
        if not isinstance(value, str):
            raise LocalProtocolError(f"{name} must be text, got {value!r}")
        raw = value.encode("utf-8")
        if len(raw) > MAX_STRING:
            raise LocalProtocolError(f"{name} is {len(raw)} bytes; at most {MAX_STRING}")
        return bytes([len(raw)]) + raw

    def decode(self, name: str, data: bytes, offset: int) -> tuple[str, int]:
        if offset >= len(data):
            raise FrameError("payload", f"{name}: payload too short")
        size = data[offset]
        end = offset + 1 + size
        if size > MAX_STRING or end > len(data):
            raise FrameError("payload", f"{name}: bad string length {size}")
        try:
            return data[offset + 1 : end].decode("utf-8"), end
        except UnicodeDecodeError:
            raise FrameError("payload", f"{name}: not UTF-8") from None


class Records(Codec[tuple[T, ...]]):
    """u8 count, then that many fixed records (frozen dataclasses of wire fields)."""

    def __init__(self, record: type[T], max_count: int) -> None:
        self.record = record
        self.max_count = max_count
        self.wire_name = f"u8 count + {record.__name__}[count] (at most {max_count})"

    def encode(self, name: str, value: tuple[T, ...]) -> bytes:
        if len(value) > self.max_count:
            raise LocalProtocolError(f"{name} has {len(value)} entries; at most {self.max_count}")
        out = bytearray([len(value)])
        for item in value:
            out += encode_fields(item)
        return bytes(out)

    def decode(self, name: str, data: bytes, offset: int) -> tuple[tuple[T, ...], int]:
        if offset >= len(data):
            raise FrameError("payload", f"{name}: payload too short")
        count = data[offset]
        if count > self.max_count:
            raise FrameError("payload", f"{name}: {count} entries; at most {self.max_count}")
        offset += 1
        items = []
        for _ in range(count):
            values, offset = decode_fields(self.record, data, offset)
            items.append(self.record(**values))
        return tuple(items), offset

    def to_json(self, value: tuple[T, ...]) -> Any:
        return [fields_to_json(item) for item in value]

    def from_json(self, value: Any) -> tuple[T, ...]:
        return tuple(self.record(**fields_from_json(self.record, item)) for item in value)


def wire(codec: Codec[Any], unit: str = "", doc: str = "") -> Any:
    """Declare a dataclass field with its wire codec, unit and meaning."""
    from dataclasses import field

    return field(metadata={"codec": codec, "unit": unit, "doc": doc})


def wire_fields(cls: type) -> list[tuple[str, Codec[Any]]]:
    """The wire fields of a message or record class, in wire order."""
    cached: list[tuple[str, Codec[Any]]] | None = cls.__dict__.get("_wire_cache")
    if cached is None:
        cached = [
            (f.name, f.metadata["codec"]) for f in dataclass_fields(cls) if "codec" in f.metadata
        ]
        type.__setattr__(cls, "_wire_cache", cached)
    return cached


def encode_fields(obj: Any) -> bytes:
    return b"".join(
        codec.encode(name, getattr(obj, name)) for name, codec in wire_fields(type(obj))
    )


def decode_fields(cls: type, data: bytes, offset: int) -> tuple[dict[str, Any], int]:
    values: dict[str, Any] = {}
    for name, codec in wire_fields(cls):
        values[name], offset = codec.decode(name, data, offset)
    return values, offset


def fields_to_json(obj: Any) -> dict[str, Any]:
    return {name: codec.to_json(getattr(obj, name)) for name, codec in wire_fields(type(obj))}


def fields_from_json(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    known = dict(wire_fields(cls))
    unknown = set(data) - set(known)
    if unknown:
        raise LocalProtocolError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return {name: known[name].from_json(value) for name, value in data.items()}
