"""The simulated unit: the device side of PROTOCOL.md, sans I/O.

``receive(bytes)`` takes what the host sent, ``read_output()`` gives back what the
unit sends, ``poll()`` carries out what time alone does (ramps, the dwell deadline,
the watchdog, scripted faults) and ``next_deadline()`` says when ``poll`` must next
run. Whoever serves the unit (``sim://``, a pty, TCP) calls these under one lock;
the unit itself never blocks, never starts a thread and reads time only from its
injected clock.

Time inside is integer microseconds, so a session on a manual clock is exact: a
600 s dwell delivers 600,000 ms, not 599,999.

The output model is PROTOCOL.md section 7: for a channel with target ``A`` and ramp
``R``, ``out(t) = min(level(t), A * (D - t) / R)``, where ``level`` slews toward the
setpoint at ``A / R`` and ``D`` is the dwell deadline. Output is zero at ``D`` by
construction, whatever the host does.

``log`` records what the unit actually did (state changes, output on and off,
levels, faults), for tests and benchmarks to measure from the unit's side.

By job (issue 20): ``estim.sim.handlers`` (the requests), ``estim.sim.unit_base``
(state and the output model over time), ``estim.sim.faults`` (the fault script),
``estim.sim.model`` (the data); ``SimulatedUnit`` here joins them and is what its
transport drives.
"""

from __future__ import annotations

from estim.protocol import (
    Fault,
    FrameError,
    Heartbeat,
    Kind,
    Message,
)

from .config import UnitConfig
from .faults import FaultScript
from .handlers import RequestHandlers
from .model import (
    _US,
    ENDED_SESSIONS,
    OPEN_CIRCUIT_OHM,
    REPLY_CACHE,
    LogEntry,
    Refused,
    _locked,
)


class SimulatedUnit(RequestHandlers, FaultScript):
    """A stimulator that speaks PROTOCOL.md v1. See the module docstring."""

    @_locked
    def receive(self, data: bytes) -> None:
        """Bytes from the host."""
        now = self._now()
        self._advance(now)
        self._decoder.receive(data, now)  # in whole us: the 50 ms gap is exact
        while True:
            try:
                message = self._decoder.next_message()
            except FrameError as err:
                self._bad_frame(err, now)
                continue
            if message is None:
                break
            if message.KIND == Kind.REQUEST:
                if self._feeds_watchdog(message):
                    if self._session is not None and self._last_rx is not None:
                        gap = now - self._last_rx
                        self._session.max_gap_us = max(self._session.max_gap_us, gap)
                    self._last_rx = now
                self.requests_seen[message.TYPE] += 1
                self._request(message, now)
        # what the requests made due now (a slew of zero length), after their answers
        self._advance(now)
        self._flush_events()
        self._log_levels(now)

    def _feeds_watchdog(self, message: Message) -> bool:
        """PROTOCOL.md 9.1: only a HEARTBEAT naming the live session feeds its
        watchdog (START arms it). Nothing else proves that the session loop is
        alive: not a poll, not an amplitude change, not a refused request."""
        return (
            isinstance(message, Heartbeat)
            and self._session is not None
            and message.session_id == self._session.id
        )

    @_locked
    def read_output(self) -> bytes:
        """Bytes for the host, in order; the buffer is emptied."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    @_locked
    def poll(self) -> None:
        """Do what time alone does, up to now."""
        now = self._now()
        self._advance(now)
        self._flush_events()
        self._log_levels(now)

    @_locked
    def next_deadline(self) -> float | None:
        """Clock time (seconds) at which ``poll`` must next run, or None."""
        pending = self._timed()
        return None if pending is None else pending[0] / _US

    @property
    def faults(self) -> set[Fault]:
        return {f for f in Fault if self._faults & (1 << (f - 1))}

    @_locked
    def output_ua(self, channel: int, t: float | None = None) -> int:
        """A channel's output now (or at clock time ``t`` within the live session)."""
        session = self._session
        if session is None or channel not in session.channels:
            return 0
        at = self._now() if t is None else round(t * _US)
        return session.channels[channel].output(at, session.deadline_us)

    def outputs(self) -> list[int]:
        return [self.output_ua(c) for c in range(1, self.config.channels + 1)]

    @property
    def output_on(self) -> bool:
        return any(self.outputs())

    def events(self, kind: str) -> list[LogEntry]:
        return [e for e in self.log if e.kind == kind]


__all__ = [
    "ENDED_SESSIONS",
    "OPEN_CIRCUIT_OHM",
    "REPLY_CACHE",
    "LogEntry",
    "Refused",
    "SimulatedUnit",
    "UnitConfig",
]
