"""The session's events on the way to the terminal: one plain line per event,
and a queue the live view and the line printer read, waited on in the session's
clock (so a test on a manual clock moves virtual time by waiting)."""

from __future__ import annotations

import queue
from typing import Any

from estim.record import EventRecord


def describe(event: EventRecord, session_id: str) -> str | None:
    """One plain line for an event, as ``estim show`` words it (None for the start
    request, which the summary above already showed)."""
    from estim import words

    if event.kind == "start_requested":
        return None
    if event.kind == "start_accepted":
        return f"started session {session_id}"
    return words.event(event)


class EventQueue:
    """Events from the session loop to the terminal, waited for on the session's
    clock (so a test on a manual clock moves virtual time by waiting)."""

    def __init__(self, clock: Any) -> None:
        self._items: queue.SimpleQueue[EventRecord] = queue.SimpleQueue()
        self._ready = clock.signal()

    def put(self, event: EventRecord) -> None:
        self._items.put(event)
        self._ready.set()

    def get(self, timeout: float) -> EventRecord | None:
        if self._items.empty():
            self._ready.clear()
            if self._items.empty():
                self._ready.wait(timeout)
        try:
            return self._items.get_nowait()
        except queue.Empty:
            return None

    def get_nowait(self) -> EventRecord:
        return self._items.get_nowait()

    def empty(self) -> bool:
        return self._items.empty()
