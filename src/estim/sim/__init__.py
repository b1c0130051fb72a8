"""The simulated estim unit: the device side of PROTOCOL.md, for tests and demos.

    from estim.clock import ManualClock
    from estim.sim import SimulatedUnit, serve

    unit = SimulatedUnit(clock=ManualClock())
    with serve(unit) as url:            # "sim://unit1", openable with pyserial
        ...

Importing this package registers the ``sim://`` URL scheme with pyserial.
"""

from __future__ import annotations

import serial

from .config import UnitConfig
from .line import FaultWindow, Line, LinkFaults
from .options import SimSpec, parse_options
from .registry import serve
from .transport import Connection, PoweredUnit
from .unit import OPEN_CIRCUIT_OHM, LogEntry, SimulatedUnit

if "estim.urlhandler" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("estim.urlhandler")

__all__ = [
    "OPEN_CIRCUIT_OHM",
    "Connection",
    "FaultWindow",
    "Line",
    "LinkFaults",
    "LogEntry",
    "PoweredUnit",
    "SimSpec",
    "SimulatedUnit",
    "UnitConfig",
    "parse_options",
    "serve",
]
