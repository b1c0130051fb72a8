"""What a simulated unit is: its identity, its limits (reported in DEVICE_INFO)
and its electrical model. Values are in wire units (uA, 0.1 Hz, us, ms, ohm)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from estim.protocol import FLAG_SIMULATED, MAX_CHANNELS, PROTOCOL_VERSION, DeviceInfo


@dataclass(frozen=True)
class UnitConfig:
    channels: int = 2
    amplitude_max_ua: int = 50_000
    amplitude_step_ua: int = 100
    frequency_min_dhz: int = 10  # 1 Hz
    frequency_max_dhz: int = 1500  # 150 Hz
    pulse_width_min_us: int = 50
    pulse_width_max_us: int = 500
    slew_max_ua_per_s: int = 10_000  # 10 mA/s
    watchdog_min_ms: int = 200
    watchdog_max_ms: int = 2000
    dwell_min_ms: int = 60_000
    dwell_max_ms: int = 600_000
    ramp_max_ms: int = 30_000
    lead_off_ohm: int = 20_000
    #: the output stage's compliance voltage: output * impedance above it is an over-current fault
    compliance_mv: int = 120_000
    #: electrode impedance of every channel at power-up (a needle pair in tissue)
    impedance_ohm: int = 2_000
    waveforms: int = 0b111
    modes: int = 0b111
    model: str = "estim-sim"
    serial_number: str = "SIM-0001"
    firmware: str = "sim-1.0"
    #: the unit's clock (time_ms) at power-up; it wraps at 2^32 (tests of a unit that has
    #: run for days, or that is about to wrap)
    clock_start_ms: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.channels <= MAX_CHANNELS:
            problems.append(f"channels={self.channels} (allowed 1..{MAX_CHANNELS})")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and value < 0:
                problems.append(f"{f.name}={value} (must not be negative)")
        if self.amplitude_step_ua <= 0 or self.amplitude_step_ua * 100 > self.amplitude_max_ua:
            problems.append(
                f"amplitude_step_ua={self.amplitude_step_ua} (must be > 0 and at most 1% of "
                f"amplitude_max_ua={self.amplitude_max_ua}, SAFETY.md section 3)"
            )
        for low, high in (
            ("frequency_min_dhz", "frequency_max_dhz"),
            ("pulse_width_min_us", "pulse_width_max_us"),
            ("watchdog_min_ms", "watchdog_max_ms"),
            ("dwell_min_ms", "dwell_max_ms"),
        ):
            if getattr(self, low) > getattr(self, high):
                problems.append(f"{low}={getattr(self, low)} is above {high}={getattr(self, high)}")
        if self.clock_start_ms > 0xFFFFFFFF:
            problems.append(f"clock_start_ms={self.clock_start_ms} (must fit 32 bits)")
        if self.frequency_min_dhz == 0:
            problems.append("frequency_min_dhz=0 (must be > 0)")
        if problems:
            raise ValueError("invalid simulated unit: " + "; ".join(problems))

    def device_info(self, *, seq: int = 0) -> DeviceInfo:
        return DeviceInfo(
            seq=seq,
            protocol_version=PROTOCOL_VERSION,
            channel_count=self.channels,
            flags=FLAG_SIMULATED,
            waveforms=self.waveforms,
            modes=self.modes,
            amplitude_max_ua=self.amplitude_max_ua,
            amplitude_step_ua=self.amplitude_step_ua,
            frequency_min_dhz=self.frequency_min_dhz,
            frequency_max_dhz=self.frequency_max_dhz,
            pulse_width_min_us=self.pulse_width_min_us,
            pulse_width_max_us=self.pulse_width_max_us,
            slew_max_ua_per_s=self.slew_max_ua_per_s,
            watchdog_min_ms=self.watchdog_min_ms,
            watchdog_max_ms=self.watchdog_max_ms,
            dwell_min_ms=self.dwell_min_ms,
            dwell_max_ms=self.dwell_max_ms,
            ramp_max_ms=self.ramp_max_ms,
            lead_off_ohm=self.lead_off_ohm,
            model=self.model,
            serial_number=self.serial_number,
            firmware=self.firmware,
        )
