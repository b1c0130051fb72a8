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
import logging
import queue
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from estim.errors import JournalError

log = logging.getLogger("estim.serve")

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
    ``estim.journal.Journal`` has created and migrated). Thread-safe.

    ``record`` never blocks: one writer thread commits what has been recorded, many
    actions to a transaction, and waits ``gap_s`` between transactions. A flood of
    refused requests (each one an action) thus costs the journal a few short
    transactions a second, never one fsync per request holding the write lock a live
    session's journal writer needs (that writer stops output when an event cannot be
    made durable within 1 s, SAFETY.md 7). An action is in the journal within about
    ``gap_s`` of its request; ``recent`` waits for what was recorded before it."""

    def __init__(self, path: str | Path, *, gap_s: float = 0.1) -> None:
        self.path = Path(path)
        self.gap_s = gap_s
        #: what could not be written, newest last (logged too; the writer tries again)
        self.errors: list[str] = []
        self._lock = threading.Lock()  # the connection
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._done = threading.Condition()
        self._recorded = 0
        self._written = 0
        self._closing = threading.Event()
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as err:
            raise JournalError(f"cannot open the journal {self.path}: {err}") from None
        self._thread = threading.Thread(target=self._run, name="estim-actions")
        self._thread.start()

    def record(
        self,
        who: Who,
        action: str,
        *,
        room: str | None = None,
        session_id: str | None = None,
        detail: dict[str, Any] | None = None,
        result: str = "ok",
    ) -> None:
        """Queue one action for the journal (stamped now). Never blocks."""
        row = (
            _utc_now(),
            who.clinician,
            who.origin,
            room,
            action,
            session_id,
            json.dumps(detail or {}, default=str),
            result,
        )
        with self._done:
            self._recorded += 1
        self._queue.put(row)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything recorded so far is in the journal."""
        with self._done:
            target = self._recorded
            return self._done.wait_for(lambda: self._written >= target, timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < 1000:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            with self._done:
                self._written += len(batch)
                self._done.notify_all()
            if not stop:
                self._closing.wait(self.gap_s)

    def _write(self, batch: list[tuple[Any, ...]]) -> None:
        """One transaction; tried again (every second, 10 times) if the journal refuses."""
        for attempt in range(10):
            try:
                with self._lock:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._db.executemany(
                            "INSERT INTO actions (utc, clinician, origin, room, action, "
                            "session_id, detail, result) VALUES (?,?,?,?,?,?,?,?)",
                            batch,
                        )
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                    self._db.execute("COMMIT")
                return
            except sqlite3.Error as err:
                message = f"cannot write {len(batch)} action(s) to the journal {self.path}: {err}"
                self.errors.append(message)
                log.error("%s (try %d of 10)", message, attempt + 1)
                if self._closing.wait(1.0) and attempt >= 2:
                    return

    def recent(self, limit: int = 100, *, session_id: str | None = None) -> list[Action]:
        """The newest actions first (those about ``session_id`` only, if given),
        everything recorded before this call included."""
        self.flush()
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
        """Write what is queued, then close."""
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._closing.set()
        with self._lock:
            self._db.close()
