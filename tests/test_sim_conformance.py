"""Conformance: every host-to-device golden vector drives the simulated unit to the
reply PROTOCOL.md prescribes for the reference unit (section 13)."""

from __future__ import annotations

from typing import Any

import pytest

from estim.protocol import DeviceInfo, message_to_dict
from estim.sim import UnitConfig

from . import vectors
from .harness import Harness, configure

REQUESTS = [v for v in vectors.load("requests")]


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
