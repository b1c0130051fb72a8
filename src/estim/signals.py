"""Signals end a session with output off: Ctrl-C (SIGINT), SIGTERM and SIGHUP (the
terminal closed). The handler only asks the session loop to stop, which never
blocks, so it is safe whatever the main thread was doing. (``estim stop`` from
another terminal reaches the device itself: ``estim.owner``.)"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Protocol

from estim.protocol import StopReason

_REASONS = {
    signal.SIGINT: (StopReason.OPERATOR, "Ctrl-C"),
    signal.SIGTERM: (StopReason.HOST_SHUTDOWN, "SIGTERM: the program was asked to end"),
    signal.SIGHUP: (StopReason.HOST_SHUTDOWN, "SIGHUP: the terminal closed"),
}


class Stoppable(Protocol):
    def request_stop(self, reason: StopReason = ..., detail: str = ...) -> None: ...


class SignalLatch:
    """Stands in for a session that does not exist yet: a stop requested before
    ``attach`` is held, and passed on the moment the session is attached."""

    def __init__(self) -> None:
        self.session: Stoppable | None = None
        self.pending: tuple[StopReason, str] | None = None

    def request_stop(self, reason: StopReason = StopReason.OPERATOR, detail: str = "") -> None:
        if self.session is None:
            self.pending = (reason, detail)
        else:
            self.session.request_stop(reason, detail)

    def attach(self, session: Stoppable) -> None:
        self.session = session
        if self.pending is not None:
            session.request_stop(*self.pending)


@contextlib.contextmanager
def stop_on_signals(session: Stoppable, *, enabled: bool = True) -> Iterator[list[int]]:
    """While inside, SIGINT/SIGTERM/SIGHUP call ``session.request_stop``. Yields the
    list of signals received. Does nothing outside the main thread."""
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        reason, detail = _REASONS[signal.Signals(signum)]
        session.request_stop(reason, detail)

    previous = {sig: signal.signal(sig, handler) for sig in _REASONS}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
