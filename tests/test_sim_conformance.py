"""Conformance: every host-to-device golden vector drives the simulated unit to the
reply PROTOCOL.md prescribes for the reference unit (section 13): the valid
requests, the invalid frames (answered or dropped by section 3.4's rule), and the
sequences of requests whose rules take more than one step."""

from __future__ import annotations

from typing import Any

import pytest

from estim.conformance.matching import matches
from estim.protocol import DeviceInfo, message_to_dict
from estim.sim import UnitConfig

from . import vectors
from .harness import Harness, configure

REQUESTS = [v for v in vectors.load("requests")]
INVALID = vectors.invalid()
SEQUENCES = vectors.sequences()


def test_default_unit_is_the_reference_unit() -> None:
    typical = next(v for v in vectors.load("responses") if v["name"] == "DEVICE_INFO typical")
    ours = message_to_dict(UnitConfig().device_info())
    limits = {
        k: v
        for k, v in typical["message"].items()
        if k not in ("seq", "model", "serial_number", "firmware")
    }
    assert {k: ours[k] for k in limits} == limits


@pytest.mark.parametrize("vector", REQUESTS, ids=[v["name"] for v in REQUESTS])
def test_request_vector_gets_the_prescribed_reply(vector: dict[str, Any]) -> None:
    h = Harness()
    h.request(configure(1, 12_000), seq=0x7777)  # the reference unit: channel 1 configured
    replies = [
        m
        for m in h.send_raw(bytes.fromhex(vector["hex"]))
        if m.seq == vector["message"]["seq"] and m.KIND == 2
    ]
    assert len(replies) == 1
    reply = message_to_dict(replies[0])
    expected = vector["reply"]
    assert {k: reply.get(k) for k in expected} == expected
    if isinstance(replies[0], DeviceInfo):
        assert replies[0] == UnitConfig().device_info(seq=replies[0].seq)


def test_every_request_type_is_covered() -> None:
    assert {v["message"]["type"] for v in REQUESTS} == {
        "HELLO",
        "CONFIGURE_CHANNEL",
        "START",
        "SET_AMPLITUDE",
        "HEARTBEAT",
        "STOP",
        "GET_STATUS",
        "CLEAR_FAULT",
    }


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_frame_gets_the_prescribed_reply_or_none(vector: dict[str, Any]) -> None:
    h = Harness()
    h.request(configure(1, 12_000), seq=0x7777)
    answers = [message_to_dict(m) for m in h.send_raw(bytes.fromhex(vector["hex"]))]
    expected = [] if vector["reply"] is None else [vector["reply"]]
    assert answers == expected


@pytest.mark.parametrize("sequence", SEQUENCES, ids=[v["name"] for v in SEQUENCES])
def test_sequence_gets_the_prescribed_answers_and_events(sequence: dict[str, Any]) -> None:
    h = Harness()
    for step in sequence["steps"]:
        got = [message_to_dict(m) for m in h.send_raw(bytes.fromhex(step["hex"]))]
        assert len(got) == len(step["expect"]), (step, got)
        for expected, actual in zip(step["expect"], got, strict=True):
            assert matches(expected, actual), (expected, actual)
    assert h.unit.state == 0
    assert not h.unit.output_on


def test_the_sequences_run_back_to_back_on_one_unit() -> None:
    """What a conformance run against a real unit does: no reset between them."""
    h = Harness()
    for sequence in SEQUENCES:
        for step in sequence["steps"]:
            got = [message_to_dict(m) for m in h.send_raw(bytes.fromhex(step["hex"]))]
            assert matches(step["expect"], got), (sequence["name"], step, got)
