"""``estim conformance``: the vectors it sends, judged by a unit's own limits; the
suite against the simulated unit on a manual clock, over a real pty in real time,
and against deliberately broken units; the command line."""

from __future__ import annotations

from dataclasses import replace

import pytest

from estim.conformance.limits import channel_config, session_shape
from estim.conformance.matching import describe, matches
from estim.conformance.replies import REFERENCE, UnitModel, reference_reply
from estim.conformance.sequences import sequence_vectors
from estim.conformance.vectors import invalid_vectors, valid_vectors
from estim.protocol import Kind, message_from_dict, message_to_dict
from estim.sim import UnitConfig

from . import vectors
from .harness import Harness

#: units unlike the reference one, each judged by its own DEVICE_INFO
OTHER_UNITS = {
    "4 channels, 100 mA": UnitConfig(channels=4, amplitude_max_ua=100_000),
    "1 channel, 1 mA steps": UnitConfig(
        channels=1, amplitude_max_ua=100_000, amplitude_step_ua=1_000
    ),
    "8 channels, slow slew, short ramps": UnitConfig(
        channels=8, slew_max_ua_per_s=2_000, ramp_max_ms=4_000, watchdog_max_ms=900
    ),
    "1 uA steps, narrow frequencies": UnitConfig(
        amplitude_step_ua=1, amplitude_max_ua=5_000, frequency_min_dhz=50, frequency_max_dhz=60
    ),
    "2 s minimum dwell": UnitConfig(dwell_min_ms=2_000),
}
UNITS = {"reference": UnitConfig(), **OTHER_UNITS}


# --- the vectors moved into the package ---------------------------------------------


def test_the_package_builds_the_committed_vectors() -> None:
    built = valid_vectors()
    for name in ("requests", "responses", "events"):
        assert built[name] == vectors.load(name)
    assert invalid_vectors() == vectors.invalid()
    assert sequence_vectors() == vectors.sequences()


def test_the_reference_model_is_the_typical_device_info() -> None:
    typical = next(v for v in vectors.load("responses") if v["name"] == "DEVICE_INFO typical")
    assert (
        message_to_dict(replace(REFERENCE.info, seq=typical["message"]["seq"]))
        == (typical["message"])
    )
    assert dict(REFERENCE.targets) == {1: 12_000}


def test_the_simulated_unit_reports_what_its_config_says() -> None:
    for config in UNITS.values():
        assert config.device_info().channel_count == config.channels


@pytest.mark.parametrize("unit", list(UNITS), ids=list(UNITS))
def test_request_replies_follow_the_units_own_limits(unit: str) -> None:
    """The replies computed for a unit's DEVICE_INFO agree with the simulated unit
    built with those limits, vector by vector (two readings of the spec)."""
    config = UNITS[unit]
    info = config.device_info()
    target = session_shape(info, info.dwell_max_ms).amplitude_ua
    model = UnitModel(info, {1: target})
    for vector in vectors.load("requests"):
        h = Harness(config)
        h.request(channel_config(info, 1, target), seq=0x7777)
        answers = [
            m
            for m in h.send_raw(bytes.fromhex(vector["hex"]))
            if m.KIND == Kind.RESPONSE and m.seq == vector["message"]["seq"]
        ]
        assert len(answers) == 1, vector["name"]
        expected = reference_reply(vector["message"], model)
        got = message_to_dict(answers[0])
        assert {k: got.get(k) for k in expected} == expected, (unit, vector["name"])


def test_replies_differ_where_the_limits_differ() -> None:
    """A 4-channel 100 mA unit is not judged by the reference unit's limits."""
    info = OTHER_UNITS["4 channels, 100 mA"].device_info()
    big = message_to_dict(
        replace(
            message_from_dict(vectors.load("requests")[9]["message"]),  # CONFIGURE typical
            amplitude_ua=80_000,
        )
    )
    assert reference_reply(big)["error"] == "OUT_OF_RANGE"
    assert reference_reply(big, UnitModel(info, {}))["type"] == "ACK"
    mask = {"type": "START", "session_id": 7, "dwell_ms": 480_000, "ramp_ms": 5_000}
    mask |= {"watchdog_ms": 500, "channel_mask": 0b1100}
    assert reference_reply(mask)["field"] == "CHANNEL_MASK"
    assert reference_reply(mask, UnitModel(info, {1: 12_000})) == {
        "type": "NACK",
        "error": "NOT_CONFIGURED",
        "field": "CHANNEL",
        "channel": 3,
        "state": "IDLE",
    }


def test_a_unit_without_a_waveform_refuses_it_by_name() -> None:
    info = UnitConfig(waveforms=0b001, modes=0b101).device_info()
    vector = next(
        v for v in vectors.load("requests") if v["name"] == "CONFIGURE_CHANNEL waveform=MONOPHASIC"
    )
    assert reference_reply(vector["message"], UnitModel(info))["field"] == "WAVEFORM"
    burst = next(v for v in vectors.load("requests") if v["name"] == "CONFIGURE_CHANNEL mode=BURST")
    assert reference_reply(burst["message"], UnitModel(info))["field"] == "MODE"


@pytest.mark.parametrize("unit", list(UNITS), ids=list(UNITS))
def test_sequences_for_a_units_limits_run_back_to_back_on_it(unit: str) -> None:
    config = UNITS[unit]
    h = Harness(config)
    for sequence in sequence_vectors(config.device_info()):
        for step in sequence["steps"]:
            got = [message_to_dict(m) for m in h.send_raw(bytes.fromhex(step["hex"]))]
            assert matches(step["expect"], got), (unit, sequence["name"], step, got)
    assert h.unit.state == 0


def test_sequence_expectations_list_every_channel_of_the_unit() -> None:
    info = OTHER_UNITS["4 channels, 100 mA"].device_info()
    impedance = next(s for s in sequence_vectors(info) if s["section"] == "5.2")
    status = impedance["steps"][0]["expect"][0]
    assert len(status["channels"]) == 4


def test_describe_renders_a_frame_on_one_line() -> None:
    nack = {"type": "NACK", "seq": 5, "error": "OUT_OF_RANGE", "field": "DWELL", "channel": 0}
    assert describe(nack) == "NACK(seq=5, error=OUT_OF_RANGE, field=DWELL, channel=0)"
    assert describe(nack, {"error": "X"}) == "NACK(error=OUT_OF_RANGE)"
    assert describe(None) == "nothing"
