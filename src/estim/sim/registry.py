"""Simulated units served in this process, reachable as ``sim://NAME``.

``serve(unit)`` powers a unit on (its own thread runs it) and gives the URL a
host opens; leaving the ``with`` block powers it off. A bare ``sim://?options``
URL instead builds a fresh unit for that one connection.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import serial

from estim.clock import REAL_CLOCK, Clock

from .options import LINK_OPTIONS, parse_options
from .transport import Connection, PoweredUnit
from .unit import SimulatedUnit

_lock = threading.Lock()
_units: dict[str, PoweredUnit] = {}
_names = itertools.count(1)


@contextmanager
def serve(unit: SimulatedUnit, name: str | None = None) -> Iterator[str]:
    """Power ``unit`` on and register it; yields its URL, ``sim://NAME``."""
    with _lock:
        name = name or f"unit{next(_names)}"
        if name in _units:
            raise ValueError(f"a simulated unit named {name!r} is already served")
        powered = PoweredUnit(unit)
        _units[name] = powered
    try:
        yield f"sim://{name}"
    finally:
        with _lock:
            _units.pop(name, None)
        if powered.connection is not None:
            powered.connection.close()
        powered.power_off()


def powered(name: str) -> PoweredUnit:
    with _lock:
        try:
            return _units[name]
        except KeyError:
            known = ", ".join(sorted(_units)) or "none"
            raise serial.SerialException(
                2, f"no simulated unit named {name!r} is served in this process (served: {known})"
            ) from None


def open_url(url: str, clock: Clock | None = None) -> tuple[Connection, PoweredUnit | None]:
    """Connect to the unit a ``sim://`` URL names. Returns the connection and, for a
    fresh unit built from the URL's options, the PoweredUnit to power off at close."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sim":
        raise serial.SerialException(f"expected a sim:// URL, got {url!r}")
    name = parts.netloc
    try:
        if name:
            unit = powered(name)
            spec = parse_options(parts.query, allowed=LINK_OPTIONS)
            h2d, d2h = spec.lines(unit.clock.now())
            return unit.connect(h2d=h2d, d2h=d2h), None
        spec = parse_options(parts.query)
    except ValueError as err:
        raise serial.SerialException(f"{url}: {err}") from None
    fresh = PoweredUnit(spec.build_unit(clock or REAL_CLOCK))
    h2d, d2h = spec.lines(fresh.clock.now())
    return fresh.connect(h2d=h2d, d2h=d2h), fresh
