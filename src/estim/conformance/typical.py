"""Typical field values: the messages the golden vectors vary from, and the
reference unit's DEVICE_INFO (PROTOCOL.md 13)."""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from typing import Any

from estim.protocol import ChannelStatus
from estim.protocol.fields import Codec, EnumU8, Records, Text, UInt

TYPICAL: dict[str, int] = {
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
TEXT = {"model": "estim-sim", "serial_number": "SIM-0001", "firmware": "1.0.0"}


def message_fields(cls: type) -> list[tuple[str, Codec[Any], str, str]]:
    """A message's wire fields in wire order: (name, codec, unit, meaning)."""
    return [
        (f.name, f.metadata["codec"], f.metadata["unit"], f.metadata["doc"])
        for f in dataclass_fields(cls)
        if "codec" in f.metadata
    ]


def typical(cls: type) -> dict[str, Any]:
    """The typical value of every wire field of ``cls``."""
    values: dict[str, Any] = {}
    for name, codec, _, _ in message_fields(cls):
        if isinstance(codec, UInt):
            values[name] = TYPICAL[name]
        elif isinstance(codec, EnumU8):
            values[name] = next(iter(codec.enum.__members__.values()))
        elif isinstance(codec, Text):
            values[name] = TEXT[name]
        elif isinstance(codec, Records):
            values[name] = (
                ChannelStatus(amplitude_ua=12000, setpoint_ua=12000, impedance_ohm=2000),
                ChannelStatus(amplitude_ua=0, setpoint_ua=0, impedance_ohm=0xFFFFFFFF),
            )
    return values
