"""Every request vector and every invalid vector, each sent to a fresh C reference
unit in the reference state of PROTOCOL.md section 13, gets exactly its ``reply``."""

from __future__ import annotations

from typing import Any

import pytest

from estim.conformance.matching import matches
from estim.protocol import encode, message_from_dict
from tests.cbuild import Build
from tests.vectors import load

from .refunit import RefUnit

REQUESTS = load("requests")
INVALID = load("invalid")
SETUP_SEQ = 30000  # the CONFIGURE that sets up the reference state; no vector uses it


def reference_unit(build: Build) -> RefUnit:
    """IDLE, no session, channel 1 configured as the typical CONFIGURE_CHANNEL vector."""
    unit = RefUnit(build.unit)
    typical = next(v for v in REQUESTS if v["name"] == "CONFIGURE_CHANNEL typical")
    setup = message_from_dict({**typical["message"], "seq": SETUP_SEQ})
    try:
        assert unit.exchange(encode(setup)) == [
            {"type": "ACK", "seq": SETUP_SEQ, "request_type": "CONFIGURE_CHANNEL", "state": "IDLE"}
        ]
    except BaseException:
        unit.__exit__(AssertionError, None, None)  # kill it
        raise
    return unit


def answers(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] in ("ACK", "NACK", "DEVICE_INFO", "STATUS")]


def test_setup_seq_is_unused() -> None:
    assert all(v["message"]["seq"] != SETUP_SEQ for v in REQUESTS)


@pytest.mark.parametrize("vector", REQUESTS, ids=[v["name"] for v in REQUESTS])
def test_request_vector_gets_its_reply(cunit: Build, vector: dict[str, Any]) -> None:
    with reference_unit(cunit) as unit:
        frames = unit.exchange(bytes.fromhex(vector["hex"]))
    replies = answers(frames)
    assert len(replies) == 1, frames
    expected = {**vector["reply"], "seq": vector["message"]["seq"]}
    if expected["type"] in ("ACK", "NACK"):
        expected["request_type"] = vector["message"]["type"]
    assert matches(expected, replies[0]), (expected, replies[0])
    events = [f for f in frames if f not in replies]
    if vector["reply"]["type"] == "ACK" and vector["message"]["type"] == "START":
        assert [e["type"] for e in events] == ["OUTPUT_STARTED"]
        assert frames[0] == replies[0]  # the ACK before OUTPUT_STARTED (6.1)
    else:
        assert events == []


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_gets_its_reply(cunit: Build, vector: dict[str, Any]) -> None:
    with reference_unit(cunit) as unit:
        frames = unit.exchange(bytes.fromhex(vector["hex"]))
    if vector["reply"] is None:
        assert frames == []
    else:
        assert len(frames) == 1, frames
        assert matches(vector["reply"], frames[0]), (vector["reply"], frames[0])
