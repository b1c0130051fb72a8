"""Injected time: the real monotonic clock, or a manual clock for tests.

Every component that waits (the simulated unit, the driver's reader thread, the
session loop) takes a ``Clock`` and waits only through it: ``clock.now()``,
``clock.signal()`` (an event whose ``wait`` timeout is in clock time) and
``clock.start_thread()``. With ``RealClock`` these are ``time.monotonic``,
``threading.Event`` and a daemon thread.

``ManualClock`` makes a multi-threaded system deterministic in virtual time, in
the spirit of Trio's MockClock. Threads started with ``start_thread`` are
*participants*; a participant is idle only while it is blocked in a clock wait.
Time moves only when a non-participant (a test) drives it, with ``advance(dt)``
or by waiting on a signal itself: the driver waits until every participant is
idle, then jumps to the earliest deadline any of them waits for, wakes those
threads, waits for quiet again, and so on. So a 10-minute session runs in
milliseconds, every heartbeat and watchdog check happens at its exact virtual
instant, and nothing depends on how fast the machine is.

A participant that blocks on something other than the clock (a real socket, a
pty) never goes idle; the driver then raises ``ClockStalled`` after
``stall_timeout`` real seconds instead of hanging. Use a manual clock only with
in-process transports (``sim://``).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Protocol

from estim.errors import EstimError

_NS = 1_000_000_000


class ClockStalled(EstimError, RuntimeError):
    """Virtual time cannot move: a participant never went idle, or nothing can ever happen."""


class Signal(Protocol):
    """A flag threads wait on, with timeouts measured by the owning clock."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool:
        """Block until set (True) or until ``timeout`` clock-seconds pass (False)."""
        ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale with an arbitrary origin."""
        ...

    def signal(self) -> Signal: ...
    def start_thread(self, target: Callable[[], None], name: str) -> threading.Thread: ...
    def sleep(self, seconds: float) -> None: ...


class RealClock:
    """The machine's monotonic clock and plain threads."""

    def now(self) -> float:
        return time.monotonic()

    def signal(self) -> Signal:
        return threading.Event()

    def start_thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "RealClock()"


#: the clock used when none is given
REAL_CLOCK = RealClock()


class _Participant:
    __slots__ = ("cond", "deadline_ns", "ident", "name", "waiting_on")

    def __init__(self, name: str, lock: threading.RLock) -> None:
        self.name = name
        self.ident: int | None = None
        self.waiting_on: _ManualSignal | None = None
        self.deadline_ns: int | None = None
        #: shares the clock's lock; only this participant waits on it
        self.cond = threading.Condition(lock)


class _ManualSignal:
    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._clock._lock:
            self._flag = True
            self._clock._release(lambda p: p.waiting_on is self)
            self._clock._others.notify_all()

    def clear(self) -> None:
        with self._clock._lock:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        return self._clock._wait(self, timeout)


class ManualClock:
    """Virtual time that moves only when a test drives it. See the module docstring."""

    def __init__(self, start: float = 0.0, *, stall_timeout: float = 10.0) -> None:
        self._lock = threading.RLock()
        #: the driver waits here for participants to go idle
        self._quiet = threading.Condition(self._lock)
        #: non-participants that are not driving wait here for their signal
        self._others = threading.Condition(self._lock)
        self._now_ns = round(start * _NS)
        self._stall_timeout = stall_timeout
        self._participants: set[_Participant] = set()
        self._local = threading.local()
        self._driver = threading.Lock()

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now():.6f})"

    # -- the Clock interface --------------------------------------------------

    def now(self) -> float:
        return self._now_ns / _NS

    def signal(self) -> Signal:
        return _ManualSignal(self)

    def sleep(self, seconds: float) -> None:
        self.signal().wait(max(0.0, seconds))

    def start_thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        participant = _Participant(name, self._lock)
        with self._lock:
            self._participants.add(participant)  # counted busy from this moment

        def run() -> None:
            self._local.participant = participant
            participant.ident = threading.get_ident()
            try:
                target()
            finally:
                with self._lock:
                    self._participants.discard(participant)
                    self._quiet.notify_all()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    # -- driving time -----------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, letting every participant act at
        each instant it asked to be woken at."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds} s)")
        if self._is_participant():
            raise ClockStalled("a participant thread cannot drive the clock it waits on")
        with self._driver, self._lock:
            self._run_until(lambda: False, self._now_ns + round(seconds * _NS))

    def settle(self) -> None:
        """Wait, without moving time, until every participant is idle."""
        self.advance(0)

    # -- internals --------------------------------------------------------------

    def _is_participant(self) -> bool:
        return getattr(self._local, "participant", None) is not None

    def _busy(self) -> list[_Participant]:
        return [p for p in self._participants if p.waiting_on is None]

    def _release(self, which: Callable[[_Participant], bool]) -> None:
        """Mark blocked participants runnable and wake them (caller holds the lock)."""
        for p in self._participants:
            if p.waiting_on is not None and which(p):
                p.waiting_on = None
                p.deadline_ns = None
                p.cond.notify()

    def _is_due(self, p: _Participant) -> bool:
        return p.deadline_ns is not None and p.deadline_ns <= self._now_ns

    def _wait(self, signal: _ManualSignal, timeout: float | None) -> bool:
        deadline = None
        if timeout is not None:
            # a positive timeout always lets time move, even one that rounds to 0 ns
            step = round(timeout * _NS)
            deadline = self._now_ns + (max(1, step) if timeout > 0 else 0)
        participant: _Participant | None = getattr(self._local, "participant", None)
        with self._lock:
            if signal._flag:
                return True
            if deadline is not None and deadline <= self._now_ns:
                return False
            if participant is not None:
                participant.waiting_on = signal
                participant.deadline_ns = deadline
                self._quiet.notify_all()
                while participant.waiting_on is not None:
                    participant.cond.wait()
                return signal._flag
        # a non-participant: drive time ourselves, unless another thread already is
        if self._driver.acquire(blocking=False):
            try:
                with self._lock:
                    return self._run_until(lambda: signal._flag, deadline)
            finally:
                self._driver.release()
        with self._lock:
            while not signal._flag and (deadline is None or self._now_ns < deadline):
                self._others.wait()
            return signal._flag

    def _wait_quiet(self) -> None:
        limit = time.monotonic() + self._stall_timeout
        while busy := self._busy():
            left = limit - time.monotonic()
            if left <= 0:
                names = ", ".join(sorted(p.name for p in busy))
                frames = sys._current_frames()
                stacks = "".join(
                    f"\n--- {p.name}:\n" + "".join(traceback.format_stack(frames[p.ident]))
                    for p in busy
                    if p.ident in frames
                )
                raise ClockStalled(
                    f"threads never went idle on the manual clock at t={self.now():.3f} s: {names}{stacks}"
                )
            self._quiet.wait(left)

    def _run_until(self, done: Callable[[], bool], deadline_ns: int | None) -> bool:
        """Step virtual time until ``done()`` or ``deadline_ns`` (lock held)."""
        while True:
            self._wait_quiet()
            if done():
                return True
            deadlines = [
                p.deadline_ns
                for p in self._participants
                if p.waiting_on is not None and p.deadline_ns is not None
            ]
            step = min(deadlines, default=None)
            if deadline_ns is not None and (step is None or step > deadline_ns):
                self._now_ns = max(self._now_ns, deadline_ns)
                self._others.notify_all()
                self._wait_quiet()
                return done()
            if step is None:
                raise ClockStalled(
                    f"waiting forever at t={self.now():.3f} s: no thread will ever wake"
                )
            self._now_ns = max(self._now_ns, step)
            self._release(self._is_due)
            self._others.notify_all()
