"""estim: times electrical-stimulation sessions and controls the unit that delivers them.

Public names are loaded on first use (PEP 562), so ``import estim`` and
``estim --help`` stay fast; everything listed in ``__all__`` is public API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_EXPORTS: dict[str, str] = {
    # the library API a charting app uses
    "connect": "estim.device",
    "list_ports": "estim.device",
    "Device": "estim.device",
    "UnitInfo": "estim.info",
    "UnitStatus": "estim.info",
    "Limits": "estim.limits",
    "ClinicLimits": "estim.limits",
    "SessionPlan": "estim.plan",
    "ChannelPlan": "estim.plan",
    "Session": "estim.session",
    "run_session": "estim.device",
    "SessionState": "estim.session_state",
    "SessionRecord": "estim.record",
    "EventRecord": "estim.record",
    "Journal": "estim.journal",
    "StopReason": "estim.protocol",
    "RealClock": "estim.clock",
    "ManualClock": "estim.clock",
    # errors
    "EstimError": "estim.errors",
    "ProtocolError": "estim.errors",
    "LocalProtocolError": "estim.errors",
    "RemoteProtocolError": "estim.errors",
    "FrameError": "estim.errors",
    "VersionMismatch": "estim.errors",
    "LinkError": "estim.errors",
    "PortNotFound": "estim.errors",
    "PortBusy": "estim.errors",
    "NoAnswer": "estim.errors",
    "LinkTimeout": "estim.errors",
    "LinkLost": "estim.errors",
    "DeviceError": "estim.errors",
    "DeviceFault": "estim.errors",
    "PlanError": "estim.errors",
    "DwellLimitError": "estim.errors",
    "OutputLimitError": "estim.errors",
    "OptionError": "estim.errors",
    "UnitBusy": "estim.errors",
    "JournalError": "estim.errors",
    "SessionNotFound": "estim.errors",
}

__all__ = ["__version__", "aio", *_EXPORTS]

if TYPE_CHECKING:
    from estim.clock import ManualClock as ManualClock, RealClock as RealClock
    from estim.device import (
        Device as Device,
        connect as connect,
        list_ports as list_ports,
        run_session as run_session,
    )
    from estim.errors import (
        DeviceError as DeviceError,
        DeviceFault as DeviceFault,
        DwellLimitError as DwellLimitError,
        EstimError as EstimError,
        FrameError as FrameError,
        JournalError as JournalError,
        LinkError as LinkError,
        LinkLost as LinkLost,
        LinkTimeout as LinkTimeout,
        LocalProtocolError as LocalProtocolError,
        NoAnswer as NoAnswer,
        OptionError as OptionError,
        OutputLimitError as OutputLimitError,
        PlanError as PlanError,
        PortBusy as PortBusy,
        PortNotFound as PortNotFound,
        ProtocolError as ProtocolError,
        RemoteProtocolError as RemoteProtocolError,
        SessionNotFound as SessionNotFound,
        UnitBusy as UnitBusy,
        VersionMismatch as VersionMismatch,
    )
    from estim.info import UnitInfo as UnitInfo, UnitStatus as UnitStatus
    from estim.journal import Journal as Journal
    from estim.limits import ClinicLimits as ClinicLimits, Limits as Limits
    from estim.plan import ChannelPlan as ChannelPlan, SessionPlan as SessionPlan
    from estim.protocol import StopReason as StopReason
    from estim.record import EventRecord as EventRecord, SessionRecord as SessionRecord
    from estim.session import Session as Session
    from estim.session_state import SessionState as SessionState


def __getattr__(name: str) -> Any:
    if name == "aio":  # the asyncio runner, a module: estim.aio.connect(url)
        return importlib.import_module("estim.aio")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'estim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
