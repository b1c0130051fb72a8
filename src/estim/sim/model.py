"""The simulated unit's pieces that are data, not behaviour: the output model of one
channel and one session (PROTOCOL.md section 7), the log's entries, a refusal, the
constants of PROTOCOL.md 10 the unit keeps to, and the two decorators that
serialise its public methods (fault injections come from a test's own thread).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar, cast

from estim.protocol import (
    ClearFault,
    ConfigureChannel,
    ErrorCode,
    Field,
    SetAmplitude,
    Start,
)

_US = 1_000_000
#: PROTOCOL.md 10: how many CONFIGURE_CHANNEL, SET_AMPLITUDE and CLEAR_FAULT answers are remembered
REPLY_CACHE = 8
_REMEMBERED = (ConfigureChannel, SetAmplitude, ClearFault)
#: PROTOCOL.md 3.4: the NACK for a request that failed a check after its CRC
_REJECTION_ERRORS = {
    "version": ErrorCode.UNSUPPORTED_VERSION,
    "kind": ErrorCode.UNKNOWN_TYPE,
    "flags": ErrorCode.BAD_FLAGS,
    "type": ErrorCode.UNKNOWN_TYPE,
    "payload": ErrorCode.BAD_PAYLOAD,
}
#: PROTOCOL.md 10: ended session ids kept exactly; older ones are covered by the floor
ENDED_SESSIONS = 64
#: impedance reported for an open electrode (a pulled needle clip)
OPEN_CIRCUIT_OHM = 10_000_000


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """Serialise a public method: tests inject faults from their own thread."""

    @wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return cast(F, run)


def _changes(method: F) -> F:
    """A fault injection: serialised, and whoever serves the unit is woken after it."""

    @wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            result = method(self, *args, **kwargs)
        if self.wakeup is not None:
            self.wakeup()
        return result

    return cast(F, run)


class Refused(Exception):
    """A request is answered with NACK (internal to the unit)."""

    def __init__(self, error: ErrorCode, field: Field = Field.NONE, channel: int = 0) -> None:
        self.error, self.field, self.channel = error, field, channel


@dataclass(frozen=True)
class LogEntry:
    """One thing the unit did. ``t`` is clock time in seconds."""

    t: float
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 6), "kind": self.kind, **self.data}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class _Channel:
    """One channel's slew: from ``start`` at ``t0`` toward ``setpoint`` at target/ramp."""

    def __init__(self, number: int, target: int, ramp_us: int, t0: int) -> None:
        self.number = number
        self.target = target
        self.ramp_us = ramp_us
        self.t0 = t0
        self.start = 0
        self.setpoint = target
        self.report_reached = False  # AMPLITUDE_REACHED owed when the slew completes

    def level(self, t: int) -> int:
        moved = self.target * max(0, t - self.t0) // self.ramp_us
        if self.setpoint >= self.start:
            return min(self.setpoint, self.start + moved)
        return max(self.setpoint, self.start - moved)

    def reached_at(self) -> int:
        return self.t0 + _ceil_div(abs(self.setpoint - self.start) * self.ramp_us, self.target)

    def cap(self, t: int, deadline: int) -> int:
        return self.target * max(0, deadline - t) // self.ramp_us

    def output(self, t: int, deadline: int) -> int:
        if t >= deadline:
            return 0
        return min(self.level(t), self.cap(t, deadline))

    def retarget(self, t: int, setpoint: int) -> None:
        self.start = self.level(t)
        self.t0 = t
        self.setpoint = setpoint


class _Session:
    def __init__(self, start: Start, t: int, channels: dict[int, _Channel]) -> None:
        self.id = start.session_id
        #: the START that began it: a copy must match it (PROTOCOL.md 6.1, 10)
        self.start = start
        self.start_us = t
        self.deadline_us = t + start.dwell_ms * 1000
        self.watchdog_us = start.watchdog_ms * 1000
        self.mask = start.channel_mask
        self.channels = channels
        self.ramp_done = False
        self.ramping_down = False
        #: the longest silence between valid requests while output was on
        self.max_gap_us = 0
        #: bumped whenever a setpoint changes; keys the cached crossing times below
        self.version = 0
        self.cache: dict[tuple[Any, ...], int | None] = {}


def _first_true(pred: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """Smallest t in [lo, hi] with pred(t), for a predicate that stays true once true."""
    if lo > hi or not pred(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
