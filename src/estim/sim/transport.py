"""Serving a simulated unit in-process: its power (a thread), its cable (a
connection made of two ``Line``s), and the host-side read/write that the
``sim://`` pyserial handler wraps.

``PoweredUnit`` is the unit's CPU: a thread that wakes at the unit's next deadline
(a ramp end, the dwell deadline, the watchdog, a scripted fault) or when delayed
bytes arrive, and runs it. It keeps running when the host disconnects, as a real
unit does, so its watchdog and deadline act on a vanished host. ``Connection`` is
the cable: at most one at a time (a second is "busy"); bytes the host writes
reach the unit at once, in the writer's thread, unless the line delays or paces
them. Everything runs on the unit's clock, so with a ``ManualClock`` the host
and the unit share virtual time.
"""

from __future__ import annotations

import errno
import threading

import serial

from estim.clock import Clock

from .line import Line
from .unit import SimulatedUnit


class PoweredUnit:
    """A simulated unit with power on: its own thread runs it until ``power_off``."""

    def __init__(self, unit: SimulatedUnit) -> None:
        self.unit = unit
        self.clock: Clock = unit.clock
        self._lock = threading.Lock()
        self._wake = self.clock.signal()
        self._off = False
        self._thread_deadline: float | None = None
        self.connection: Connection | None = None
        unit.wakeup = self._wake.set
        self._thread = self.clock.start_thread(self._run, name="estim-sim-unit")

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._off:
                    return
                now = self.clock.now()
                self._pump(now)
                deadline = self._next_deadline()
                self._thread_deadline = deadline
                self._wake.clear()
            self._wake.wait(None if deadline is None else max(0.0, deadline - now))

    def _pump(self, now: float) -> None:
        """Deliver what has arrived, let time act, forward the unit's output (lock held)."""
        conn = self.connection
        data = conn.h2d.take(now) if conn else b""
        if data:
            self.unit.receive(data)
        else:
            self.unit.poll()
        out = self.unit.read_output()
        if out and conn is not None and not conn.unplugged:
            conn.d2h.send(out, now)
            conn.rx.set()

    def _next_deadline(self) -> float | None:
        conn = self.connection
        times = [self.unit.next_deadline(), conn.h2d.next_due() if conn else None]
        return min((t for t in times if t is not None), default=None)

    def _written(self, conn: Connection, data: bytes) -> None:
        with self._lock:
            now = self.clock.now()
            conn.h2d.send(data, now)
            self._pump(now)
            deadline = self._next_deadline()
            if deadline is not None and (
                self._thread_deadline is None or deadline < self._thread_deadline
            ):
                self._wake.set()

    def connect(self, *, h2d: Line | None = None, d2h: Line | None = None) -> Connection:
        with self._lock:
            if self._off:
                raise serial.SerialException(errno.ENODEV, "simulated unit is powered off")
            if self.connection is not None:
                raise serial.SerialException(
                    errno.EBUSY, "simulated unit is busy: another connection has it open"
                )
            self.connection = Connection(self, h2d or Line(), d2h or Line())
            return self.connection

    def _disconnect(self, conn: Connection) -> None:
        with self._lock:
            if self.connection is conn:
                self.connection = None

    def power_off(self) -> None:
        with self._lock:
            self._off = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        self.unit.wakeup = None


class Connection:
    """The host's end of the cable to a powered unit."""

    def __init__(self, powered: PoweredUnit, h2d: Line, d2h: Line) -> None:
        self.powered = powered
        self.clock = powered.clock
        self.h2d = h2d
        self.d2h = d2h
        self.rx = self.clock.signal()
        self.unplugged = False
        self.closed = False
        self._cancel = False

    def write(self, data: bytes) -> int:
        self._check()
        self.powered._written(self, bytes(data))
        return len(data)

    def read(self, size: int, timeout: float | None) -> bytes:
        """Up to ``size`` bytes; returns when ``size`` arrived or after ``timeout`` clock-seconds."""
        start = self.clock.now()
        out = bytearray()
        while True:
            with self.powered._lock:
                self._check()
                now = self.clock.now()
                out += self.d2h.take(now, size - len(out))
                if len(out) >= size or self._cancel:
                    self._cancel = False
                    return bytes(out)
                self.rx.clear()
                due = self.d2h.next_due()
            waits = [due - now] if due is not None else []
            if timeout is not None:
                left = start + timeout - now
                if left <= 0:
                    return bytes(out)
                waits.append(left)
            self.rx.wait(min(waits) if waits else None)

    def in_waiting(self) -> int:
        with self.powered._lock:
            self._check()
            now = self.clock.now()
            return sum(len(chunk) for due, chunk in self.d2h._queue if due <= now)

    def reset_input(self) -> None:
        with self.powered._lock:
            self.d2h.take(self.clock.now())

    def cancel_read(self) -> None:
        self._cancel = True
        self.rx.set()

    def _check(self) -> None:
        if self.closed:
            raise serial.PortNotOpenError()
        if self.unplugged:
            raise serial.SerialException("simulated unit disconnected (cable pulled)")

    def unplug(self) -> None:
        """Pull the cable: the host's next read or write fails at once. The unit
        keeps running (its watchdog acts)."""
        self.unplugged = True
        self.powered._disconnect(self)
        self.rx.set()

    def close(self) -> None:
        self.closed = True
        self.powered._disconnect(self)
        self.rx.set()
