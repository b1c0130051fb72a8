"""The journal's action log: every request of the clinic service that acts on a unit
or a record (start, amplitude, stop, stop all, clear fault, a login), with who made
it, from where, and what came of it, refusals included (SAFETY.md 10).

A session's own events (``amplitude_set``, ``stop_requested``, ...) are in the
journal already; this table says which clinician, from which address and page, asked
for each. It is the journal's migration to schema version 3 (``MIGRATION``, listed in
``estim.journal.MIGRATIONS``). Writes go through a connection of this log's own, so
a web request never holds the lock a live session's journal writer needs.

This module imports only the standard library and ``estim.errors``: the journal
imports it for its migration.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from estim.errors import JournalError

#: the journal's migration to schema version 3 (``estim.journal.MIGRATIONS``)
MIGRATION = """
CREATE TABLE actions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    utc        TEXT NOT NULL,
    clinician  TEXT NOT NULL,
    origin     TEXT NOT NULL,
    room       TEXT,
    action     TEXT NOT NULL,
    session_id TEXT,
    detail     TEXT NOT NULL,
    result     TEXT NOT NULL
);
CREATE INDEX actions_utc ON actions (utc);
"""


@dataclass(frozen=True)
class Who:
    """Who asked, and from where: the clinician (from a token or a session cookie,
    else the words of an unauthenticated loopback service) and the client's address,
    with its Origin and User-Agent when it sent them."""

    clinician: str
    origin: str


@dataclass(frozen=True)
class Action:
    id: int
    utc: str
    clinician: str
    origin: str
    room: str | None
    action: str
    session_id: str | None
    detail: dict[str, Any]
    result: str


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ActionLog:
    """Appends to, and reads, the ``actions`` table of the journal at ``path`` (which
    ``estim.journal.Journal`` has created and migrated). Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as err:
            raise JournalError(f"cannot open the journal {self.path}: {err}") from None

    def record(
        self,
        who: Who,
        action: str,
        *,
        room: str | None = None,
        session_id: str | None = None,
        detail: dict[str, Any] | None = None,
        result: str = "ok",
    ) -> int:
        """One action, one transaction. Raises ``JournalError``."""
        try:
            with self._lock:
                cursor = self._db.execute(
                    "INSERT INTO actions (utc, clinician, origin, room, action, session_id, "
                    "detail, result) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        _utc_now(),
                        who.clinician,
                        who.origin,
                        room,
                        action,
                        session_id,
                        json.dumps(detail or {}, default=str),
                        result,
                    ),
                )
                return int(cursor.lastrowid or 0)
        except sqlite3.Error as err:
            raise JournalError(f"cannot write the journal {self.path}: {err}") from None

    def recent(self, limit: int = 100, *, session_id: str | None = None) -> list[Action]:
        """The newest actions first (those about ``session_id`` only, if given)."""
        where, args = ("WHERE session_id = ?", (session_id,)) if session_id else ("", ())
        try:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT id, utc, clinician, origin, room, action, session_id, detail, result "
                    f"FROM actions {where} ORDER BY id DESC LIMIT ?",
                    (*args, int(limit)),
                ).fetchall()
        except sqlite3.Error as err:
            raise JournalError(f"cannot read the journal {self.path}: {err}") from None
        return [
            Action(
                id=row[0],
                utc=row[1],
                clinician=row[2],
                origin=row[3],
                room=row[4],
                action=row[5],
                session_id=row[6],
                detail=json.loads(row[7]),
                result=row[8],
            )
            for row in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
