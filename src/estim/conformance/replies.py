"""The reply PROTOCOL.md prescribes for a request sent to an idle unit, computed from
that unit's own limits (its DEVICE_INFO) and which of its channels are configured.

Written from the spec's tables (5.1, 5.3, 6.1), separately from the simulator, so
that judging the simulator compares two readings of the spec. ``REFERENCE`` is the
reference unit of PROTOCOL.md 13, whose replies the golden vectors carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from estim.protocol import PROTOCOL_VERSION, DeviceInfo, Mode, Waveform

from .typical import typical


@dataclass(frozen=True)
class UnitModel:
    """What a reply depends on: the unit's limits, and the target amplitude of each
    configured channel (a channel not in ``targets`` was never configured). The unit
    is IDLE with no session, and every electrode is connected."""

    info: DeviceInfo
    targets: Mapping[int, int] = field(default_factory=dict)
    #: protocol versions the unit speaks
    versions: frozenset[int] = frozenset({PROTOCOL_VERSION})
    #: channels whose electrode is open (a test load with nothing on them)
    open_channels: frozenset[int] = frozenset()


#: PROTOCOL.md 13: the typical DEVICE_INFO's limits, channel 1 configured at 12 mA
REFERENCE = UnitModel(DeviceInfo(**typical(DeviceInfo)), {1: 12_000})


def _nack(error: str, field: str = "NONE", channel: int = 0) -> dict[str, Any]:
    return {"type": "NACK", "error": error, "field": field, "channel": channel, "state": "IDLE"}


def _ack() -> dict[str, Any]:
    return {"type": "ACK", "state": "IDLE"}


def reference_reply(m: dict[str, Any], unit: UnitModel = REFERENCE) -> dict[str, Any]:
    """The answer to request ``m`` (a message in the vectors' JSON form): its type
    and the fields the spec fixes (``state``; a NACK's ``error``, ``field`` and
    ``channel``; DEVICE_INFO's ``protocol_version``)."""
    kind = m["type"]
    if kind == "HELLO":
        return _hello(m, unit)
    if kind == "CONFIGURE_CHANNEL":
        return _configure(m, unit.info)
    if kind == "START":
        return _start(m, unit)
    if kind == "SET_AMPLITUDE":
        return _nack("NO_SESSION", "SESSION_ID")
    if kind == "HEARTBEAT":
        return _ack() if m["session_id"] == 0 else _nack("NO_SESSION", "SESSION_ID")
    if kind in ("STOP", "CLEAR_FAULT"):
        return _ack()
    if kind == "GET_STATUS":
        return {"type": "STATUS", "state": "IDLE"}
    raise ValueError(f"no reference reply for {kind}")


def _hello(m: dict[str, Any], unit: UnitModel) -> dict[str, Any]:
    lo, hi = m["min_version"], m["max_version"]
    if lo < 1 or lo > hi:
        return _nack("OUT_OF_RANGE", "VERSION")
    common = [v for v in unit.versions if lo <= v <= hi]
    if not common:
        return _nack("UNSUPPORTED_VERSION", "VERSION")
    return {"type": "DEVICE_INFO", "protocol_version": max(common)}


def _configure(m: dict[str, Any], info: DeviceInfo) -> dict[str, Any]:
    ch = m["channel"]

    def oor(field: str) -> dict[str, Any]:
        return _nack("OUT_OF_RANGE", field, ch if 1 <= ch <= info.channel_count else 0)

    f, alt, sw = m["frequency_dhz"], m["alt_frequency_dhz"], m["switch_ms"]
    if not 1 <= ch <= info.channel_count:
        return oor("CHANNEL")
    if not info.waveforms & (1 << Waveform[m["waveform"]]):
        return oor("WAVEFORM")
    if not info.modes & (1 << Mode[m["mode"]]):
        return oor("MODE")
    if not info.frequency_min_dhz <= f <= info.frequency_max_dhz:
        return oor("FREQUENCY")
    if not info.pulse_width_min_us <= m["pulse_width_us"] <= info.pulse_width_max_us:
        return oor("PULSE_WIDTH")
    a, step = m["amplitude_ua"], info.amplitude_step_ua
    if not step <= a <= info.amplitude_max_ua or (step and a % step):
        return oor("AMPLITUDE")
    if m["mode"] == "CONTINUOUS":
        if alt:
            return oor("ALT_FREQUENCY")
        if sw:
            return oor("SWITCH_PERIOD")
    elif m["mode"] == "DENSE_DISPERSE":
        if not info.frequency_min_dhz <= alt <= info.frequency_max_dhz or alt == f:
            return oor("ALT_FREQUENCY")
        if not 100 <= sw <= 60_000:
            return oor("SWITCH_PERIOD")
    else:
        if not info.frequency_min_dhz <= alt < f:
            return oor("ALT_FREQUENCY")
        if not 1 <= sw <= 60_000 or sw * alt >= 10_000 or sw * f < 10_000:
            return oor("SWITCH_PERIOD")
    fastest = max(f, alt) if m["mode"] == "DENSE_DISPERSE" else f
    if 2 * m["pulse_width_us"] * fastest >= 10_000_000:
        return oor("PULSE_WIDTH")
    return _ack()


def _start(m: dict[str, Any], unit: UnitModel) -> dict[str, Any]:
    info = unit.info
    mask = m["channel_mask"]
    if m["session_id"] == 0:
        return _nack("OUT_OF_RANGE", "SESSION_ID")
    if mask == 0 or mask >> info.channel_count:
        return _nack("OUT_OF_RANGE", "CHANNEL_MASK")
    channels = [n for n in range(1, info.channel_count + 1) if mask & (1 << (n - 1))]
    for n in channels:
        if n not in unit.targets:
            return _nack("NOT_CONFIGURED", "CHANNEL", n)
    if not info.dwell_min_ms <= m["dwell_ms"] <= info.dwell_max_ms:
        return _nack("OUT_OF_RANGE", "DWELL")
    if not info.watchdog_min_ms <= m["watchdog_ms"] <= info.watchdog_max_ms:
        return _nack("OUT_OF_RANGE", "WATCHDOG")
    if m["ramp_ms"] > info.ramp_max_ms or 2 * m["ramp_ms"] > m["dwell_ms"]:
        return _nack("OUT_OF_RANGE", "RAMP")
    for n in channels:
        if unit.targets[n] * 1000 > info.slew_max_ua_per_s * m["ramp_ms"]:
            return _nack("OUT_OF_RANGE", "RAMP", n)
    for n in channels:
        if n in unit.open_channels:
            return _nack("LEAD_OFF", "CHANNEL", n)
    return {"type": "ACK", "state": "RAMPING_UP"}
