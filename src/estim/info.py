"""What a unit is and what it reports, in the units people use: ``UnitInfo`` (its
identity and limits, from DEVICE_INFO) and ``UnitStatus`` (from STATUS).

Plain value types below the driver, so plans, limits, sessions and records can
use them without importing the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from estim.protocol import (
    FLAG_SIMULATED,
    IMPEDANCE_UNKNOWN,
    DeviceInfo,
    Mode,
    State,
    Status,
    Waveform,
)

#: plan names of the wire's waveforms and modes
WAVEFORMS = {
    "biphasic_symmetric": Waveform.BIPHASIC_SYMMETRIC,
    "biphasic_asymmetric": Waveform.BIPHASIC_ASYMMETRIC,
    "monophasic": Waveform.MONOPHASIC,
}
MODES = {"continuous": Mode.CONTINUOUS, "burst": Mode.BURST, "dense_disperse": Mode.DENSE_DISPERSE}


@dataclass(frozen=True)
class UnitInfo:
    """Who the unit is and what it can do."""

    model: str
    serial_number: str
    firmware: str
    protocol_version: int
    channels: int
    simulated: bool
    waveforms: frozenset[str]
    modes: frozenset[str]
    amplitude_max_ma: float
    amplitude_step_ma: float
    frequency_min_hz: float
    frequency_max_hz: float
    pulse_width_min_us: int
    pulse_width_max_us: int
    slew_max_ma_per_s: float
    watchdog_min_s: float
    watchdog_max_s: float
    dwell_min_s: float
    dwell_max_s: float
    ramp_max_s: float
    lead_off_ohm: int

    @classmethod
    def from_message(cls, m: DeviceInfo) -> UnitInfo:
        return cls(
            model=m.model,
            serial_number=m.serial_number,
            firmware=m.firmware,
            protocol_version=m.protocol_version,
            channels=m.channel_count,
            simulated=bool(m.flags & FLAG_SIMULATED),
            waveforms=frozenset(name for name, w in WAVEFORMS.items() if m.waveforms & (1 << w)),
            modes=frozenset(name for name, md in MODES.items() if m.modes & (1 << md)),
            amplitude_max_ma=m.amplitude_max_ua / 1000,
            amplitude_step_ma=m.amplitude_step_ua / 1000,
            frequency_min_hz=m.frequency_min_dhz / 10,
            frequency_max_hz=m.frequency_max_dhz / 10,
            pulse_width_min_us=m.pulse_width_min_us,
            pulse_width_max_us=m.pulse_width_max_us,
            slew_max_ma_per_s=m.slew_max_ua_per_s / 1000,
            watchdog_min_s=m.watchdog_min_ms / 1000,
            watchdog_max_s=m.watchdog_max_ms / 1000,
            dwell_min_s=m.dwell_min_ms / 1000,
            dwell_max_s=m.dwell_max_ms / 1000,
            ramp_max_s=m.ramp_max_ms / 1000,
            lead_off_ohm=m.lead_off_ohm,
        )

    def problems(self) -> list[str]:
        """What in this DEVICE_INFO cannot be true of a unit (SAFETY.md 9): numbers
        that would divide by zero, invert a range or allow nothing. A unit that
        reports one is not used."""
        out = []
        if not 1 <= self.channels <= 8:
            out.append(f"{self.channels} channels (a unit has 1 to 8)")
        if self.amplitude_max_ma <= 0:
            out.append(f"an amplitude maximum of {self.amplitude_max_ma:g} mA")
        if not 0 < self.amplitude_step_ma <= max(self.amplitude_max_ma, 0):
            out.append(f"an amplitude step of {self.amplitude_step_ma:g} mA")
        if self.slew_max_ma_per_s <= 0:
            out.append(f"a maximum slew of {self.slew_max_ma_per_s:g} mA/s")
        for name, low, high, unit in (
            ("frequency", self.frequency_min_hz, self.frequency_max_hz, "Hz"),
            ("pulse width", self.pulse_width_min_us, self.pulse_width_max_us, "us"),
            ("watchdog", self.watchdog_min_s, self.watchdog_max_s, "s"),
            ("dwell", self.dwell_min_s, self.dwell_max_s, "s"),
        ):
            if not 0 < low <= high:
                out.append(f"a {name} range of {low:g}-{high:g} {unit}")
        if not self.waveforms or not self.modes:
            out.append("no waveform or no mode it can deliver")
        return out

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["waveforms"] = sorted(self.waveforms)
        out["modes"] = sorted(self.modes)
        return out


@dataclass(frozen=True)
class ChannelStatus:
    channel: int
    amplitude_ma: float
    setpoint_ma: float
    #: None when the unit has not measured it (the channel is not delivering output)
    impedance_ohm: int | None


@dataclass(frozen=True)
class UnitStatus:
    state: State
    session_id: int
    time_ms: int
    elapsed_s: float
    remaining_s: float
    faults: frozenset[int]
    fault_channel: int
    channels: tuple[ChannelStatus, ...]

    @classmethod
    def from_message(cls, m: Status) -> UnitStatus:
        return cls(
            state=m.state,
            session_id=m.session_id,
            time_ms=m.time_ms,
            elapsed_s=m.elapsed_ms / 1000,
            remaining_s=m.remaining_ms / 1000,
            faults=frozenset(bit + 1 for bit in range(8) if m.faults & (1 << bit)),
            fault_channel=m.fault_channel,
            channels=tuple(
                ChannelStatus(
                    channel=i + 1,
                    amplitude_ma=c.amplitude_ua / 1000,
                    setpoint_ma=c.setpoint_ua / 1000,
                    impedance_ohm=None if c.impedance_ohm == IMPEDANCE_UNKNOWN else c.impedance_ohm,
                )
                for i, c in enumerate(m.channels)
            ),
        )
