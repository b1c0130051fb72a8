"""When the program ends with a unit still open (SAFETY.md 5 and 7): the session
is stopped and its record finished, so the journal says what happened, not that
the host vanished.

A program may stop a session and end without ``wait()``, end while a session runs,
or be ended by Ctrl-C while it awaits one; with asyncio its event loop is already
closed by then. Every open device and every session whose records are still being
written are tracked here (weakly), and one ``atexit`` hook, run once the main
thread is done, stops what is still live (each runner in its own way: see
``_close_at_exit``) and waits, within ``FINISH_S``, until every record is in the
journal or in its sidecar file. Only ``kill -9`` or a power cut leaves a session to
be found ``interrupted``, and then that is what happened.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import weakref
from typing import Any, Protocol

log = logging.getLogger("estim.shutdown")

#: how long the exit hook lets each device take to stop its sessions and write
#: their records (a silent unit is given up after its watchdog period)
FINISH_S = 5.0

_EXIT = "the program ended while the session ran"


class Closable(Protocol):
    def _close_at_exit(self, detail: str, limit: float) -> None: ...


class Finishable(Protocol):
    def _finish_at_exit(self, limit: float) -> None: ...


_lock = threading.Lock()
_devices: weakref.WeakSet[Any] = weakref.WeakSet()
_sessions: weakref.WeakSet[Any] = weakref.WeakSet()


def track_device(device: Closable) -> None:
    with _lock:
        _devices.add(device)


def forget_device(device: Closable) -> None:
    with _lock:
        _devices.discard(device)


def track_session(handle: Finishable) -> None:
    with _lock:
        _sessions.add(handle)


def exit_detail() -> str:
    """The stop reason for a session the program left running: with the exception
    that ended it, if one did (Ctrl-C is a KeyboardInterrupt)."""
    last = getattr(sys, "last_type", None)
    if last is KeyboardInterrupt:
        return f"{_EXIT} (Ctrl-C)"
    if isinstance(last, type) and issubclass(last, BaseException):
        return f"{_EXIT} ({last.__name__})"
    return _EXIT


def _at_exit() -> None:
    detail = exit_detail()
    with _lock:
        devices = list(_devices)
        sessions = list(_sessions)
    for device in devices:
        try:
            device._close_at_exit(detail, FINISH_S)
        except Exception:  # the next device still gets its turn
            log.exception("closing %r as the program ended", device)
    for handle in sessions:
        try:
            handle._finish_at_exit(FINISH_S)
        except Exception:
            log.exception("finishing the record of %r as the program ended", handle)


atexit.register(_at_exit)
