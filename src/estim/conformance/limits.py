"""What a unit accepts, read off its DEVICE_INFO: the values the suite and the
sequence vectors send to it (PROTOCOL.md 5.1).

Each choice prefers the reference unit's value (2 Hz, 250 us, 12 mA, a 5 s ramp)
and moves only as far as the unit's own limits demand, so that for the reference
unit the vectors come out exactly as committed in ``firmware_protocol/vectors/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from estim.protocol import ConfigureChannel, DeviceInfo, Mode, Waveform

#: the reference unit's typical channel: 2 Hz, 250 us, 12 mA (PROTOCOL.md 13)
PREFERRED_FREQUENCY_DHZ = 20
PREFERRED_PULSE_WIDTH_US = 250
PREFERRED_AMPLITUDE_UA = 12_000
PREFERRED_RAMP_MS = 5_000


class NoSession(Exception):
    """The unit's limits leave no START it could accept (or no channel configuration)."""


def floor_step(info: DeviceInfo, amplitude_ua: int) -> int:
    """``amplitude_ua`` rounded down to the unit's amplitude step (0 if below one step)."""
    step = max(1, info.amplitude_step_ua)
    return amplitude_ua // step * step


def amplitude_ok(info: DeviceInfo, amplitude_ua: int) -> bool:
    """A target amplitude CONFIGURE_CHANNEL accepts (5.1)."""
    step = info.amplitude_step_ua
    return step > 0 and step <= amplitude_ua <= info.amplitude_max_ua and amplitude_ua % step == 0


def channel_config(info: DeviceInfo, channel: int, amplitude_ua: int) -> ConfigureChannel:
    """A CONTINUOUS configuration the unit accepts, as near 2 Hz and 250 us as it allows."""
    if not info.modes & (1 << Mode.CONTINUOUS):
        raise NoSession("the unit does not offer CONTINUOUS mode, the one the suite configures")
    waveforms = [w for w in Waveform if info.waveforms & (1 << w)]
    if not waveforms:
        raise NoSession("the unit reports no waveform (DEVICE_INFO.waveforms is 0)")
    low, high = info.frequency_min_dhz, info.frequency_max_dhz
    if low == 0 or low > high:
        raise NoSession(f"the unit's frequency range {low}..{high} dHz is empty")
    frequency = min(max(PREFERRED_FREQUENCY_DHZ, low), high)
    widest = (10_000_000 - 1) // (2 * frequency)  # the two phases must not overlap
    pulse = min(max(PREFERRED_PULSE_WIDTH_US, info.pulse_width_min_us), info.pulse_width_max_us)
    pulse = min(pulse, widest)
    if not info.pulse_width_min_us <= pulse or pulse == 0:
        raise NoSession(f"no pulse width fits {frequency} dHz in the unit's pulse width range")
    if not amplitude_ok(info, amplitude_ua):
        raise NoSession(f"{amplitude_ua} uA is not an amplitude the unit accepts")
    return ConfigureChannel(
        channel=channel,
        waveform=waveforms[0],
        mode=Mode.CONTINUOUS,
        frequency_dhz=frequency,
        pulse_width_us=pulse,
        amplitude_ua=amplitude_ua,
        alt_frequency_dhz=0,
        switch_ms=0,
    )


@dataclass(frozen=True)
class Shape:
    """A session the unit accepts: every channel at ``amplitude_ua``, ``ramp_ms`` long."""

    amplitude_ua: int
    ramp_ms: int
    dwell_ms: int

    @property
    def slope(self) -> float:
        """uA per ms: how fast output moves (PROTOCOL.md 7: k = A / R)."""
        return self.amplitude_ua / self.ramp_ms


def session_shape(
    info: DeviceInfo,
    dwell_ms: int,
    *,
    amplitude_ua: int = PREFERRED_AMPLITUDE_UA,
    ramp_ms: int = PREFERRED_RAMP_MS,
) -> Shape:
    """The preferred amplitude and ramp if the unit accepts them for ``dwell_ms``; else
    the ramp shortened to what the unit allows (ramp_max_ms, dwell / 2), then the
    amplitude lowered until the slew fits that ramp; if even one amplitude step is
    too fast for it, the longest ramp allowed."""
    if not info.dwell_min_ms <= dwell_ms <= info.dwell_max_ms:
        raise NoSession(f"a dwell of {dwell_ms} ms is outside the unit's limits")
    if info.slew_max_ua_per_s == 0 or info.amplitude_step_ua == 0:
        raise NoSession("the unit reports a slew or an amplitude step of 0")
    longest = min(info.ramp_max_ms, dwell_ms // 2)
    ramp = min(ramp_ms, longest)
    amplitude = floor_step(info, min(amplitude_ua, info.amplitude_max_ua))
    amplitude = min(amplitude, floor_step(info, info.slew_max_ua_per_s * ramp // 1000))
    if amplitude < info.amplitude_step_ua:
        amplitude = info.amplitude_step_ua
        ramp = -(-amplitude * 1000 // info.slew_max_ua_per_s)
        if ramp > longest:
            raise NoSession(
                f"one amplitude step ({amplitude} uA) at the unit's slew "
                f"({info.slew_max_ua_per_s} uA/s) needs a ramp of {ramp} ms; "
                f"the unit allows {longest} ms"
            )
    if ramp == 0 or not amplitude_ok(info, amplitude):
        raise NoSession("the unit's amplitude limits leave no target to configure")
    return Shape(amplitude_ua=amplitude, ramp_ms=ramp, dwell_ms=dwell_ms)


def lower_amplitude(info: DeviceInfo, amplitude_ua: int) -> int:
    """A second amplitude below ``amplitude_ua`` (10 mA for the reference's 12 mA), or
    one step above it if it is the lowest the unit has."""
    lower = floor_step(info, amplitude_ua * 5 // 6)
    if info.amplitude_step_ua <= lower < amplitude_ua:
        return lower
    return amplitude_ua + info.amplitude_step_ua
