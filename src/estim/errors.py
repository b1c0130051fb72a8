"""The estim error tree.

Every error message names the value, the limit and what to do, in one line, so a
clinician reading it at the chair can act on it. Errors mix in the matching
builtin (``ValueError``, ``TimeoutError``) so generic handlers still work.
"""

from __future__ import annotations


class EstimError(Exception):
    """Base of every error estim raises on purpose."""


# --- protocol -------------------------------------------------------------


class ProtocolError(EstimError):
    """Something about the bytes or messages on the wire is wrong."""


class LocalProtocolError(ProtocolError, ValueError):
    """We were asked to encode something the protocol cannot carry."""


class RemoteProtocolError(ProtocolError):
    """The other side sent something the protocol does not allow."""


class FrameError(RemoteProtocolError):
    """A frame on the wire was rejected.

    ``reason`` is one of the rejection reasons of PROTOCOL.md section 3.4
    (``cobs``, ``crc``, ``length``, ``version``, ``kind``, ``flags``, ``type``,
    ``payload``, ``gap``). When the frame's CRC was good, ``seq``, ``kind`` and
    ``msg_type`` carry its header so a device can NACK it.
    """

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        seq: int | None = None,
        kind: int | None = None,
        msg_type: int | None = None,
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.seq = seq
        self.kind = kind
        self.msg_type = msg_type
        super().__init__(f"frame rejected ({reason}){': ' + detail if detail else ''}")


class VersionMismatch(RemoteProtocolError):
    """The unit speaks no protocol version this host speaks."""


# --- link -----------------------------------------------------------------


class LinkError(EstimError):
    """The serial link to the unit failed."""


class PortNotFound(LinkError):
    """The port named does not exist."""


class BadPortURL(PortNotFound, ValueError):
    """The port's name or URL is wrong: not a serial port, or a bad option."""


class PortBusy(LinkError):
    """The port exists but another program holds it."""


class NoAnswer(LinkError, TimeoutError):
    """Nothing that speaks the estim protocol answered on the port."""


class LinkTimeout(LinkError, TimeoutError):
    """A request got no answer within its deadline and retries."""


class LinkLost(LinkError):
    """The link to the unit is gone; the unit's own watchdog turns output off."""


# --- device ---------------------------------------------------------------


class DeviceError(EstimError):
    """The unit refused a request (a NACK)."""

    def __init__(self, message: str, *, code: int = 0, field: int = 0, channel: int = 0) -> None:
        self.code = code
        self.field = field
        self.channel = channel
        super().__init__(message)


class UnitBusy(EstimError):
    """The unit is running a session (or one is starting): one session at a time."""


class DeviceFault(EstimError):
    """The unit latched a fault (lead-off, over-current, watchdog, e-stop)."""

    def __init__(self, message: str, *, code: int = 0, channel: int = 0) -> None:
        self.code = code
        self.channel = channel
        super().__init__(message)


# --- plans ----------------------------------------------------------------


class PlanError(EstimError, ValueError):
    """A session plan was refused before anything was sent to the unit."""


class DwellLimitError(PlanError):
    """A dwell outside 60-600 s (or the unit's narrower range)."""


class OutputLimitError(PlanError):
    """An output parameter outside the unit's limits or SAFETY.md's envelope."""


class OptionError(EstimError, ValueError):
    """A number given to estim's API is outside its documented range (``estim.bounds``)."""


# --- records --------------------------------------------------------------


class JournalError(EstimError):
    """The session journal could not be written or read."""


class SessionNotFound(JournalError, LookupError):
    """No session in the journal matches an id or prefix, or more than one does."""
