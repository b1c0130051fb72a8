"""The journal's recovery (``estim.journal``): which sessions are live in some
process, and which were cut short by a host that died.

While a session runs, its process holds an exclusive lock on a small lock file
(``<db>.locks/<id>``, ``LivenessLocks``); the operating system drops it when the
process dies, even on ``kill -9``. Opening the journal marks a session
``interrupted`` only if it is unfinished *and* nobody holds its lock and no sidecar
file holds its end (``recover``), so a session running in another terminal is
never mistaken for a crashed one. The lock is let go only once the session's
record is safe: finished in the journal, or saved whole to its sidecar.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import estim.outbox as outbox

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


def make_room(db: sqlite3.Connection, session_id: str, n: int) -> bool:
    """Before a writer's event ``n`` goes in: if a guess's "interrupted" event holds
    that number (another program found no live writer and numbered its guess after the
    last event it saw, while the writer was still at work), move the guess to the end,
    so the writer's event is kept rather than ignored as a copy. True if one was moved:
    the record of a session already queued has grown (``outbox.amend``)."""
    return bool(
        db.execute(
            "UPDATE events SET n=(SELECT MAX(n) + 1 FROM events WHERE session_id=?) "
            "WHERE session_id=? AND n=? AND kind='interrupted'",
            (session_id, session_id, n),
        ).rowcount
    )


def utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store(Protocol):
    """What recovery and the sidecar import need of an open ``estim.journal.Journal``."""

    path: Path
    _db: sqlite3.Connection
    _liveness: LivenessLocks

    def _transaction(self, *, wait: bool = True) -> AbstractContextManager[None]: ...

    def _held_elsewhere(self, session_id: str) -> bool: ...

    def _insert_session(self, sid: str, begin: dict[str, Any], *, ignore: bool = False) -> None: ...

    def sidecar_path(self, session_id: str) -> Path: ...


class LivenessLocks:
    """The OS locks of the sessions this journal is writing, by session id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: session id -> the open, locked file descriptor
        self.fds: dict[str, int] = {}

    def create(self) -> None:
        self.directory.mkdir(mode=0o700, exist_ok=True)

    def hold(self, sid: str) -> None:
        if fcntl is None:
            return
        path = self.directory / sid
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self.fds[sid] = fd

    def release(self, sid: str) -> None:
        fd = self.fds.pop(sid, None)
        if fd is None:
            return
        self.forget(sid)
        os.close(fd)

    def forget(self, sid: str) -> None:
        """The lock file of a session nobody holds any more."""
        with contextlib.suppress(OSError):
            (self.directory / sid).unlink()

    def held_elsewhere(self, sid: str) -> bool:
        """Whether a live process holds ``sid`` (this journal's own sessions too)."""
        if sid in self.fds:
            return True
        path = self.directory / sid
        if fcntl is None or not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def _finish_from_end(db: sqlite3.Connection, session_id: str, utc: str, data: str) -> bool:
    """A session whose "ended" event is journaled but whose outcome is not (its host
    died between the two writes): finished from that event, as its writer would have,
    and queued for delivery. False if the event does not say how it ended."""
    end = json.loads(data or "{}")
    if not isinstance(end, dict) or not end.get("outcome"):
        return False
    started = db.execute(
        "SELECT utc FROM events WHERE session_id=? AND kind='output_started' ORDER BY n LIMIT 1",
        (session_id,),
    ).fetchone()
    changed = db.execute(
        "UPDATE sessions SET state=?, outcome=?, stop_reason=?, ended_by=?, delivered_ms=?, "
        "started_utc=?, ended_utc=? WHERE id=? AND outcome IS NULL",
        (
            end["outcome"],
            end["outcome"],
            end.get("reason"),
            end.get("ended_by"),
            end.get("delivered_ms"),
            started[0] if started else None,
            utc,
            session_id,
        ),
    ).rowcount
    if changed:
        outbox.enqueue(db, session_id, utc_now())
    return True


def recover(journal: Store) -> list[str]:
    """Mark unfinished sessions whose process is gone as interrupted, stamped with
    their last record: the last moment the host knew the state of output. A
    session that another process finishes meanwhile is left as it is; one whose
    "ended" event is journaled is finished from it (the facts, not a guess)."""
    rows = journal._db.execute("SELECT id FROM sessions WHERE outcome IS NULL").fetchall()
    interrupted = []
    for (session_id,) in rows:
        if journal._held_elsewhere(session_id) or journal.sidecar_path(session_id).exists():
            continue
        with journal._transaction():
            last = journal._db.execute(
                "SELECT n, utc, t, kind, data FROM events WHERE session_id=? "
                "ORDER BY n DESC LIMIT 1",
                (session_id,),
            ).fetchone()
            n, utc, t, kind, data = last if last else (-1, utc_now(), 0.0, "none", "{}")
            ended = kind == "ended" and _finish_from_end(journal._db, session_id, utc, data)
            changed = 0 if ended else _mark_interrupted(journal._db, session_id, n, utc, t, kind)
        if ended or changed:
            with contextlib.suppress(OSError):
                journal._liveness.forget(session_id)
        if changed:
            interrupted.append(session_id)
    return interrupted


def _mark_interrupted(
    db: sqlite3.Connection, session_id: str, n: int, utc: str, t: float, kind: str
) -> int:
    reason = (
        f"the host stopped unexpectedly; last known: {kind} at {utc}, its last "
        "record; the unit's watchdog or its own deadline ended output after that"
    )
    changed: int = db.execute(
        "UPDATE sessions SET state='interrupted', outcome='interrupted', stop_reason=?, "
        "last_event='interrupted' WHERE id=? AND outcome IS NULL",
        (reason, session_id),
    ).rowcount
    if changed:  # (not finished since it was read)
        db.execute(
            "INSERT INTO events (session_id, n, utc, t, unit_ms, kind, data) "
            "VALUES (?,?,?,?,?,?,?)",
            (session_id, n + 1, utc, t, None, "interrupted", json.dumps({"reason": reason})),
        )
        outbox.enqueue(db, session_id, utc_now())  # delivered: see outbox.py
    return changed
