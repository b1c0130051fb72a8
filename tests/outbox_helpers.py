"""Journals full of finished sessions for the outbox tests, made fast: each is a copy of
a real session (run on the simulated unit by ``records_helpers``) written through the
journal's own API (begin, every event, finish) under a new id, a new start time and
the unit it is given."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from estim.journal import Journal
from estim.record import SessionRecord


class WallClock:
    """Seconds since the epoch that a test moves by hand: hours of backoff at once. It
    starts at the real time (the journal stamps what it queues with the real time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def copy_session(
    journal: Journal,
    template: SessionRecord,
    session_id: int,
    *,
    serial: str,
    created: datetime,
    finish: bool = True,
) -> str:
    """``template`` again in ``journal`` as session ``session_id`` on unit ``serial``."""
    unit = {
        "model": template.unit.model,
        "serial_number": serial,
        "firmware": template.unit.firmware,
        "simulated": template.unit.simulated,
    }
    shift = created - datetime.fromisoformat(template.created_utc.replace("Z", "+00:00"))

    def moved(utc: str | None) -> str | None:
        if utc is None:
            return None
        when = datetime.fromisoformat(utc.replace("Z", "+00:00")) + shift
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    sid = journal.begin(
        session_id,
        plan=template.plan.model_dump(mode="json"),
        unit=unit,
        port=template.unit.port,
        planned_ms=round(template.planned_s * 1000),
        utc=moved(template.created_utc),
    )
    for event in template.events[1:]:
        journal.write_event(sid, event.model_copy(update={"utc": moved(event.utc)}), "running")
    if finish:
        journal.finish(
            sid,
            outcome=template.outcome or "stopped",
            stop_reason=template.stop_reason or "operator",
            ended_by=template.ended_by,
            delivered_ms=None
            if template.delivered_s is None
            else round(template.delivered_s * 1000),
            started_utc=moved(template.started_utc),
            ended_utc=moved(template.ended_utc),
        )
    return sid


def many_sessions(
    journal: Journal,
    templates: list[SessionRecord],
    count: int,
    *,
    serials: tuple[str, ...] = ("SIM-0101", "SIM-0102", "SIM-0103"),
    first_id: int = 0x5E550000,
) -> list[str]:
    """``count`` finished sessions, each a copy of the next template, on ``serials`` in
    turn, one minute apart."""
    start = datetime(2026, 11, 22, 8, 0, tzinfo=timezone.utc)
    return [
        copy_session(
            journal,
            templates[i % len(templates)],
            first_id + i,
            serial=serials[i % len(serials)],
            created=start + timedelta(minutes=i),
        )
        for i in range(count)
    ]


#: a session's real end, as its writer or its sidecar gives it
COMPLETED: dict[str, Any] = {
    "outcome": "completed",
    "stop_reason": "the dwell is complete",
    "ended_by": "unit",
    "delivered_ms": 60000,
    "started_utc": None,
    "ended_utc": None,
}


def guessable(
    path: Path, session_id: int, plan: dict[str, Any], unit: dict[str, Any], mask: int = 1
) -> tuple[Journal, str]:
    """A session whose writer (the journal returned) is still at work, output on, but
    whose liveness lock is gone, as a journal of an older estim let it go on close():
    the next open of the journal guesses it interrupted."""
    writer = Journal(path)
    sid = writer.begin(session_id, plan=plan, unit=unit, port="sim://", planned_ms=60000)
    writer.append(sid, "output_started", {"dwell_ms": 60000, "channel_mask": mask}, unit_ms=0)
    os.close(writer._locks.pop(sid))
    return writer, sid
