"""The session's events on the way to the terminal: one plain line per event,
and a queue the live view and the line printer read, waited on in the session's
clock (so a test on a manual clock moves virtual time by waiting)."""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from estim.record import EventRecord


def describe(event: EventRecord, session_id: str) -> str | None:
    """One plain line for an event (None for events not worth a line)."""
    d = event.data

    def seconds(key: str) -> str:
        value = d.get(key)
        return "an unknown time" if value is None else f"{value / 1000:g} s"

    kind = event.kind
    if kind == "fault":
        return f"UNIT FAULT {d.get('name')}" + (
            f" on channel {d['channel']}" if d.get("channel") else ""
        )
    texts: dict[str, Callable[[], str]] = {
        "start_accepted": lambda: f"started session {session_id}",
        "output_started": lambda: "output on",
        "ramp_done": lambda: "ramp done: full amplitude",
        "ramp_down": lambda: f"ramping down: {seconds('remaining_ms')} left",
        "amplitude_set": lambda: f"channel {d.get('channel')}: amplitude to {d.get('ma')} mA",
        "amplitude_reached": lambda: f"channel {d.get('channel')}: at {d.get('ma')} mA",
        "amplitude_refused": lambda: f"channel {d.get('channel')}: {d.get('error')}",
        "stop_requested": lambda: f"stopping: {d.get('detail')}",
        "unit_stopped": lambda: f"output off after {seconds('delivered_ms')}",
        "unit_completed": lambda: f"output off after {seconds('delivered_ms')} (dwell complete)",
        "button": lambda: f"unit button {d.get('button')}",
        "events_missed": lambda: "some unit events were lost on the link",
        "unit_restarted": lambda: "THE UNIT RESTARTED",
        "ended": lambda: f"session {d.get('outcome')}: {d.get('reason')}",
    }
    text = texts.get(kind)
    return text() if text else None


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
