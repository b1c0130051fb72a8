"""estim: times electrical-stimulation sessions and controls the unit that delivers them.

Public names are loaded on first use (PEP 562), so ``import estim`` and
``estim --help`` stay fast; everything listed in ``__all__`` is public API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_EXPORTS: dict[str, str] = {
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
    "JournalError": "estim.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
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
        OutputLimitError as OutputLimitError,
        PlanError as PlanError,
        PortBusy as PortBusy,
        PortNotFound as PortNotFound,
        ProtocolError as ProtocolError,
        RemoteProtocolError as RemoteProtocolError,
        VersionMismatch as VersionMismatch,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'estim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
