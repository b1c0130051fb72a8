"""The codec agrees with the golden vectors and with PROTOCOL.md."""

from __future__ import annotations

import importlib.util
import struct
import zlib
from typing import Any

import pytest
from cobs import cobs as reference_cobs

from estim.protocol import (
    MESSAGE_CLASSES,
    Decoder,
    FrameError,
    Kind,
    MessageType,
    cobs_decode,
    cobs_encode,
    decode,
    encode,
    message_from_dict,
    message_to_dict,
)

from . import vectors

VALID = vectors.valid()
INVALID = vectors.invalid()


def _ids(vs: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vs]


@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_valid_vector_decodes_to_its_message(vector: dict[str, Any]) -> None:
    message = decode(bytes.fromhex(vector["hex"]))
    assert message_to_dict(message) == vector["message"]


@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_message_encodes_to_its_vector(vector: dict[str, Any]) -> None:
    assert encode(message_from_dict(vector["message"])).hex() == vector["hex"]


@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_valid_vector_direction_matches_kind(vector: dict[str, Any]) -> None:
    kind = MESSAGE_CLASSES[MessageType[vector["message"]["type"]]].KIND
    expected = "host_to_device" if kind == Kind.REQUEST else "device_to_host"
    assert vector["direction"] == expected


@pytest.mark.parametrize("vector", INVALID, ids=_ids(INVALID))
def test_invalid_vector_is_rejected_with_its_reason(vector: dict[str, Any]) -> None:
    wire = bytes.fromhex(vector["hex"])
    with pytest.raises(FrameError) as caught:
        decode(wire)
    assert caught.value.reason == vector["error"]
    # and through the stream decoder: nothing comes out, the reason is recorded
    decoder = Decoder()
    assert decoder.feed(wire) == []
    assert decoder.rejected >= 1
    assert decoder.last_error is not None
    assert decoder.last_error.reason == vector["error"]


def test_every_message_type_has_a_vector() -> None:
    covered = {v["message"]["type"] for v in VALID}
    assert covered == {t.name for t in MessageType}


def test_every_rejection_reason_has_a_vector() -> None:
    reasons = {v["error"] for v in INVALID}
    assert reasons == {"cobs", "crc", "length", "version", "kind", "flags", "type", "payload"}


def test_vector_names_are_unique() -> None:
    names = _ids(VALID) + _ids(INVALID)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("vector", VALID + INVALID, ids=_ids(VALID + INVALID))
def test_reference_cobs_agrees_on_every_vector(vector: dict[str, Any]) -> None:
    stuffed = bytes.fromhex(vector["hex"])[:-1]
    try:
        ours = cobs_decode(stuffed)
    except FrameError:
        with pytest.raises(reference_cobs.DecodeError):
            reference_cobs.decode(stuffed)
        return
    assert reference_cobs.decode(stuffed) == ours
    assert reference_cobs.encode(ours) == cobs_encode(ours)


def _independent_frame(vector: dict[str, Any]) -> bytes:
    """Header + payload + CRC built by hand from the vector, not by the codec."""
    msg = vector["message"]
    cls = MESSAGE_CLASSES[MessageType[msg["type"]]]
    payload = bytes.fromhex(vector["hex"])  # only for its length check below
    body = reference_cobs.decode(payload[:-1])[8:-4]
    header = struct.pack("<BBHBBH", 1, int(cls.KIND), msg["seq"], int(cls.TYPE), 0, len(body))
    return header + body + struct.pack("<I", zlib.crc32(header + body))


@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_header_and_crc_match_an_independent_build(vector: dict[str, Any]) -> None:
    wire = bytes.fromhex(vector["hex"])
    assert reference_cobs.encode(_independent_frame(vector)) + b"\x00" == wire


def test_crc32_check_value() -> None:
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_spec_and_vectors_are_generated_from_this_codec() -> None:
    path = vectors.ROOT / "firmware_protocol" / "generate.py"
    spec = importlib.util.spec_from_file_location("estim_generate", path)
    assert spec is not None
    assert spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    stale = [
        str(p.relative_to(vectors.ROOT))
        for p, text in generate.expected_files().items()
        if p.read_text(encoding="utf-8") != text
    ]
    assert stale == [], "run: python firmware_protocol/generate.py, and review the diff"
