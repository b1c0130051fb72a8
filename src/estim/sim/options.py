"""The simulated unit's options, as a ``sim://`` URL query or ``estim simulate``
arguments: ``channels=4&impedance_ohm=3000&lead_off_at=30:1&drop=0.01&seed=7``.

Units are the ones people use (mA, Hz, s); they are converted to the wire units
of ``UnitConfig``. Every bad option is a ``ValueError`` naming it and what is
allowed. Fault times are seconds after output starts, in every session; ``cut_at``
is seconds after the connection opens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs

from estim.clock import Clock

from .config import UnitConfig
from .line import FaultWindow, Line, LinkFaults
from .unit import OPEN_CIRCUIT_OHM, SimulatedUnit


def _number(name: str, text: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"sim option {name}={text!r} is not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"sim option {name}={text} is outside {low:g}..{high:g}")
    return value


def _integer(name: str, text: str, low: int, high: int) -> int:
    value = _number(name, text, low, high)
    if value != int(value):
        raise ValueError(f"sim option {name}={text} must be a whole number")
    return int(value)


# option -> (UnitConfig field, parse to wire units)
_UNIT_OPTIONS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "channels": ("channels", lambda n, v: _integer(n, v, 1, 8)),
    "amplitude_max_ma": ("amplitude_max_ua", lambda n, v: round(_number(n, v, 0.01, 1000) * 1000)),
    "amplitude_step_ma": ("amplitude_step_ua", lambda n, v: round(_number(n, v, 0.001, 10) * 1000)),
    "slew_ma_per_s": ("slew_max_ua_per_s", lambda n, v: round(_number(n, v, 0.001, 10_000) * 1000)),
    "frequency_min_hz": ("frequency_min_dhz", lambda n, v: round(_number(n, v, 0.1, 6553) * 10)),
    "frequency_max_hz": ("frequency_max_dhz", lambda n, v: round(_number(n, v, 0.1, 6553) * 10)),
    "pulse_width_min_us": ("pulse_width_min_us", lambda n, v: _integer(n, v, 1, 65535)),
    "pulse_width_max_us": ("pulse_width_max_us", lambda n, v: _integer(n, v, 1, 65535)),
    "watchdog_min_ms": ("watchdog_min_ms", lambda n, v: _integer(n, v, 1, 65535)),
    "watchdog_max_ms": ("watchdog_max_ms", lambda n, v: _integer(n, v, 1, 65535)),
    "dwell_min_s": ("dwell_min_ms", lambda n, v: round(_number(n, v, 0, 86400) * 1000)),
    "dwell_max_s": ("dwell_max_ms", lambda n, v: round(_number(n, v, 0, 86400) * 1000)),
    "ramp_max_s": ("ramp_max_ms", lambda n, v: round(_number(n, v, 0, 3600) * 1000)),
    "lead_off_ohm": ("lead_off_ohm", lambda n, v: _integer(n, v, 1, 2**32 - 2)),
    "compliance_v": ("compliance_mv", lambda n, v: round(_number(n, v, 0.001, 1000) * 1000)),
    "impedance_ohm": ("impedance_ohm", lambda n, v: _integer(n, v, 0, 2**32 - 2)),
    "clock_start_ms": ("clock_start_ms", lambda n, v: _integer(n, v, 0, 2**32 - 1)),
    "model": ("model", lambda n, v: v),
    "serial": ("serial_number", lambda n, v: v),
}
_FAULTS = ("lead_off_at", "impedance_at", "over_current_at", "estop_at", "reset_at", "internal_at")
#: an electrode open from power-up (a test load with no resistor on that channel)
_OPEN = "open_channel"
_LINK = ("drop", "corrupt", "duplicate", "delay", "delay_ms", "baud", "cut_at")
#: options a registered unit (``sim://NAME``) still accepts: they concern the cable
LINK_OPTIONS = frozenset(_LINK) | {"seed"}
ALL_OPTIONS = frozenset(_UNIT_OPTIONS) | frozenset(_FAULTS) | {_OPEN} | LINK_OPTIONS


@dataclass
class SimSpec:
    """A parsed option set: how to build the unit and its cable."""

    config: UnitConfig = field(default_factory=UnitConfig)
    seed: int = 0
    #: (seconds into each session, option name, arguments)
    faults: list[tuple[float, str, tuple[int, ...]]] = field(default_factory=list)
    #: channels whose electrode is open from power-up
    open_channels: tuple[int, ...] = ()
    link: LinkFaults = field(default_factory=LinkFaults)
    baud: int = 0
    #: (seconds after connecting, duration): every byte lost, both ways
    cuts: list[tuple[float, float]] = field(default_factory=list)

    def build_unit(self, clock: Clock) -> SimulatedUnit:
        unit = SimulatedUnit(self.config, clock=clock, seed=self.seed)
        for channel in self.open_channels:
            unit.impedance_ohm[channel - 1] = OPEN_CIRCUIT_OHM
        for offset, name, args in self.faults:
            unit.inject_in_session(offset, name.removesuffix("_at"), *args)
        return unit

    def lines(self, now: float) -> tuple[Line, Line]:
        windows = tuple(
            FaultWindow(now + start, now + start + length, LinkFaults(drop=1.0))
            for start, length in self.cuts
        )
        h2d = Line(self.link, windows, self.baud, self.seed * 2 + 1)
        d2h = Line(self.link, windows, self.baud, self.seed * 2 + 2)
        return h2d, d2h


def _parts(name: str, text: str, count: tuple[int, int]) -> list[str]:
    parts = text.split(":")
    if not count[0] <= len(parts) <= count[1]:
        raise ValueError(f"sim option {name}={text!r}: expected {_SHAPES[name]}")
    return parts


_SHAPES = {
    "lead_off_at": "SECONDS[:CHANNEL]",
    "impedance_at": "SECONDS:CHANNEL:OHM",
    "over_current_at": "SECONDS[:CHANNEL]",
    "estop_at": "SECONDS",
    "reset_at": "SECONDS",
    "internal_at": "SECONDS",
    "cut_at": "SECONDS:DURATION",
}


def parse_options(
    query: str | dict[str, list[str]], *, allowed: frozenset[str] = ALL_OPTIONS
) -> SimSpec:
    values = (
        parse_qs(query, keep_blank_values=True, strict_parsing=False)
        if isinstance(query, str)
        else query
    )
    spec = SimSpec()
    config_changes: dict[str, Any] = {}
    faults = []
    link: dict[str, float] = {}
    for name, texts in values.items():
        if name not in allowed:
            if name in ALL_OPTIONS:
                raise ValueError(
                    f"sim option {name!r} cannot be used here (only {sorted(allowed)})"
                )
            raise ValueError(
                f"unknown sim option {name!r}; known: {', '.join(sorted(ALL_OPTIONS))}"
            )
        if name not in _FAULTS and name not in ("cut_at", _OPEN) and len(texts) > 1:
            raise ValueError(f"sim option {name!r} given {len(texts)} times")
        for text in texts:
            if name in _UNIT_OPTIONS:
                field_name, parse = _UNIT_OPTIONS[name]
                config_changes[field_name] = parse(name, text)
            elif name == _OPEN:
                spec.open_channels += (_integer(name, text, 1, 8),)
            elif name == "seed":
                spec.seed = _integer(name, text, 0, 2**32 - 1)
            elif name == "baud":
                spec.baud = _integer(name, text, 0, 10_000_000)
            elif name == "delay_ms":
                link["delay_s"] = _number(name, text, 0, 60_000) / 1000
            elif name in ("drop", "corrupt", "duplicate", "delay"):
                link[name] = _number(name, text, 0, 1)
            elif name == "cut_at":
                start, length = _parts(name, text, (2, 2))
                spec.cuts.append((_number(name, start, 0, 86400), _number(name, length, 0, 86400)))
            else:
                shape = {"impedance_at": (3, 3), "lead_off_at": (1, 2), "over_current_at": (1, 2)}
                parts = _parts(name, text, shape.get(name, (1, 1)))
                at = _number(name, parts[0], 0, 86400)
                args = tuple(_integer(name, p, 0, 2**32 - 2) for p in parts[1:])
                if name in ("lead_off_at", "over_current_at") and not args:
                    args = (1,)
                faults.append((at, name, args))
    try:
        spec.config = replace(spec.config, **config_changes)
        spec.link = LinkFaults(**link)
    except (TypeError, ValueError) as err:
        raise ValueError(str(err)) from None
    for _, name, args in faults:
        if name != "estop_at" and args and not 1 <= args[0] <= spec.config.channels:
            raise ValueError(
                f"sim option {name}: channel {args[0]} does not exist (1..{spec.config.channels})"
            )
    for channel in spec.open_channels:
        if channel > spec.config.channels:
            raise ValueError(
                f"sim option {_OPEN}: channel {channel} does not exist (1..{spec.config.channels})"
            )
    spec.faults = sorted(faults)
    return spec
