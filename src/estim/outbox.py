"""The FHIR outbox: a table in the journal saying, for each finished session, whether its
record has reached the clinic's FHIR server (a transactional outbox).

A session is queued by the very transaction that gives it its outcome (``enqueue``,
called by ``Journal.finish``, the sidecar import and the recovery of an interrupted
session), so no finished session can miss the outbox and none is queued before its
record is final. Every finished session is queued, whether or not a server is
configured: a record's delivery must not depend on which program ran the session or
on the config at that moment; nothing is sent until a sender runs with ``[fhir]``.

States: ``pending`` (not yet delivered; ``next_attempt_utc`` says when a sender may try
again, ``last_error`` why the last try failed), ``sent`` (the server answered the
transaction; ``location`` is the Procedure's), ``refused`` (the server refused the
record itself, a 4xx with an OperationOutcome: kept with its reason, never retried on
its own, never dropped; ``estim push SESSION_ID`` sends it again by hand).

A sender *claims* a row (``lease_until_utc``) before it sends, so two senders (the
clinic service and ``estim push`` by hand) never send one session at once; a lease
left by a sender that died expires. All times are UTC text, which sorts as time.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from estim.errors import JournalError

#: the journal's migration to schema version 2 (``estim.journal.MIGRATIONS``)
MIGRATION = """
CREATE TABLE outbox (
    session_id       TEXT PRIMARY KEY REFERENCES sessions (id),
    queued_utc       TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'refused')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_utc TEXT NOT NULL,
    lease_until_utc  TEXT,
    last_attempt_utc TEXT,
    last_error       TEXT,
    status           INTEGER,
    sent_utc         TEXT,
    server           TEXT,
    location         TEXT
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_utc);
"""

#: the journal's migration to schema version 4: a session's record can change after it
#: was queued (a sidecar's facts replace a guess of "interrupted"); each change counts
#: one revision, and a revision above 0 goes to the server as an update (``amend``)
REVISIONS = "ALTER TABLE outbox ADD COLUMN revision INTEGER NOT NULL DEFAULT 0"

STATES = ("pending", "sent", "refused")


def utc_text(epoch_s: float) -> str:
    when = datetime.fromtimestamp(epoch_s, timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def enqueue(db: sqlite3.Connection, session_id: str, utc: str) -> None:
    """Queue a session inside the caller's open transaction (the one that finishes it).
    A session already queued keeps its state: finishing twice never resends."""
    db.execute(
        "INSERT OR IGNORE INTO outbox (session_id, queued_utc, state, next_attempt_utc) "
        "VALUES (?, ?, 'pending', ?)",
        (session_id, utc, utc),
    )


def amend(db: sqlite3.Connection, session_id: str, utc: str) -> None:
    """Queue a session whose finished record has just changed, inside the caller's
    transaction (the one that changes it): whatever its delivery stood at (sent,
    refused, pending, or held by a sender this very moment), it is pending again, due
    now, one revision on; the server is sent the new record as an update of what it
    may hold, and a try of an older revision can no longer mark it sent."""
    enqueue(db, session_id, utc)
    db.execute(
        "UPDATE outbox SET revision=revision+1, state='pending', next_attempt_utc=?, "
        "attempts=0, last_error=NULL WHERE session_id=?",
        (utc, session_id),
    )


@dataclass(frozen=True)
class Delivery:
    """Where one session's record stands with the clinic's FHIR server."""

    session_id: str
    state: str  # pending | sent | refused
    queued_utc: str
    attempts: int
    next_attempt_utc: str | None
    last_attempt_utc: str | None
    last_error: str | None
    status: int | None  # the server's HTTP status at the last answer, if any
    sent_utc: str | None
    server: str | None
    location: str | None
    #: 0 as the session was first finished; one more for each change of its record since
    revision: int = 0

    def words(self) -> str:
        """The state in a few words (local times), for ``estim show``."""
        from estim.words import local_time

        if self.state == "sent":
            where = f" as {self.location}" if self.location else ""
            again = (
                f" (revision {self.revision}: the record changed after it was queued)"
                if self.revision
                else ""
            )
            return f"sent {local_time(self.sent_utc)}{where} to {self.server}{again}"
        if self.revision and self.attempts == 0:
            return (
                f"queued again (revision {self.revision}): the record changed after it was "
                "queued, and the server's copy is to be replaced"
            )
        if self.state == "refused":
            return (
                f"REFUSED by the server ({self.status}) {local_time(self.last_attempt_utc)}: "
                f"{self.last_error}; fix the cause, then estim push {self.session_id}"
            )
        if self.attempts == 0:
            return "queued, not yet sent"
        return (
            f"queued, {self.attempts} attempt(s), next at {local_time(self.next_attempt_utc)}: "
            f"{self.last_error}"
        )

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


_COLUMNS = (
    "session_id, state, queued_utc, attempts, next_attempt_utc, last_attempt_utc, "
    "last_error, status, sent_utc, server, location, revision"
)


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(*row)


SUPERSEDED = "the record changed while it was being sent; its new version is due now"


def _superseded(db: sqlite3.Connection, session_id: str, now_s: float, server: str) -> None:
    """A try of a revision the record has moved past: counted, its hold released."""
    now = utc_text(now_s)
    db.execute(
        "UPDATE outbox SET attempts=attempts+1, lease_until_utc=NULL, last_attempt_utc=?, "
        "server=?, last_error=? WHERE session_id=?",
        (now, server, SUPERSEDED, session_id),
    )


class OpenJournal(Protocol):
    """What the outbox uses of an open ``estim.journal.Journal`` (which imports this
    module for its migration and ``enqueue``; a Protocol keeps the imports one-way)."""

    path: Path
    _db: sqlite3.Connection
    _lock: threading.RLock

    def _transaction(self, *, wait: bool = True) -> AbstractContextManager[None]: ...


class Outbox:
    """The outbox of one open ``Journal``: what to send, and what became of each try.
    Thread-safe as the journal is (its connection and its lock); nothing here waits on
    the network, and a sender holds no lock while it does."""

    def __init__(self, journal: OpenJournal) -> None:
        self.journal = journal

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            with self.journal._transaction():
                yield self.journal._db
        except sqlite3.Error as err:
            raise JournalError(f"cannot write the journal {self.journal.path}: {err}") from None

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self.journal._lock:
                return list(self.journal._db.execute(sql, args).fetchall())
        except sqlite3.Error as err:
            raise JournalError(f"cannot read the journal {self.journal.path}: {err}") from None

    # -- reading ------------------------------------------------------------------------------

    def get(self, session_id: str) -> Delivery | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM outbox WHERE session_id=?", (session_id,))
        return _delivery(rows[0]) if rows else None

    def deliveries(self, session_ids: Sequence[str]) -> dict[str, Delivery]:
        """The delivery of each session named that is in the outbox."""
        out: dict[str, Delivery] = {}
        for start in range(0, len(session_ids), 500):
            chunk = list(session_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for row in self._rows(
                f"SELECT {_COLUMNS} FROM outbox WHERE session_id IN ({marks})", tuple(chunk)
            ):
                out[row[0]] = _delivery(row)
        return out

    def pending(self) -> list[str]:
        """Every session not yet delivered, oldest first (whenever its next try is due)."""
        rows = self._rows(
            "SELECT session_id FROM outbox WHERE state='pending' ORDER BY queued_utc, session_id"
        )
        return [r[0] for r in rows]

    def due(self, now_s: float) -> list[str]:
        """The pending sessions whose next try is due at ``now_s`` and that no sender
        holds, oldest first."""
        now = utc_text(now_s)
        rows = self._rows(
            "SELECT session_id FROM outbox WHERE state='pending' AND next_attempt_utc <= ? "
            "AND (lease_until_utc IS NULL OR lease_until_utc <= ?) "
            "ORDER BY queued_utc, session_id",
            (now, now),
        )
        return [r[0] for r in rows]

    def next_due_utc(self) -> str | None:
        """When the earliest pending session may be tried (UTC text), None if none is."""
        rows = self._rows("SELECT MIN(next_attempt_utc) FROM outbox WHERE state='pending'")
        return rows[0][0] if rows else None

    def counts(self) -> dict[str, int]:
        rows = self._rows("SELECT state, COUNT(*) FROM outbox GROUP BY state")
        return {state: 0 for state in STATES} | {state: int(n) for state, n in rows}

    # -- writing ------------------------------------------------------------------------------

    def add(self, session_id: str, now_s: float) -> None:
        """Queue a finished session that is not in the outbox (recorded before it
        existed). A live session cannot be queued: its record is not final."""
        with self._write() as db:
            row = db.execute("SELECT outcome FROM sessions WHERE id=?", (session_id,)).fetchone()
            if row is None:
                raise JournalError(f"session {session_id!r}: no such session")
            if row[0] is None:
                raise JournalError(f"session {session_id} is still live; it is queued when it ends")
            enqueue(db, session_id, utc_text(now_s))

    def claim(self, session_id: str, now_s: float, lease_s: float, *, by_hand: bool) -> bool:
        """Hold a session for one try until ``now_s + lease_s``; False if another sender
        holds it, or (unless ``by_hand``) it is not pending and due."""
        now = utc_text(now_s)
        due = "" if by_hand else "AND state='pending' AND next_attempt_utc <= ?"
        args: tuple[Any, ...] = (utc_text(now_s + lease_s), session_id, now)
        if not by_hand:
            args += (now,)
        with self._write() as db:
            changed = db.execute(
                "UPDATE outbox SET lease_until_utc=? WHERE session_id=? "
                f"AND (lease_until_utc IS NULL OR lease_until_utc <= ?) {due}",
                args,
            ).rowcount
        return bool(changed)

    def sent(
        self,
        session_id: str,
        now_s: float,
        *,
        server: str,
        location: str | None,
        status: int,
        revision: int = 0,
    ) -> bool:
        """The server took ``revision`` of the record. False if the record has changed
        since (``amend``): the session then stays pending, due now, for the new one."""
        with self._write() as db:
            changed = db.execute(
                "UPDATE outbox SET state='sent', attempts=attempts+1, lease_until_utc=NULL, "
                "last_attempt_utc=?, sent_utc=?, server=?, location=?, status=?, last_error=NULL "
                "WHERE session_id=? AND revision=?",
                (utc_text(now_s), utc_text(now_s), server, location, status, session_id, revision),
            ).rowcount
            if not changed:
                _superseded(db, session_id, now_s, server)
        return bool(changed)

    def failed(
        self,
        session_id: str,
        now_s: float,
        *,
        error: str,
        status: int | None,
        retry_at_s: float,
        server: str,
        revision: int = 0,
    ) -> bool:
        """A try of ``revision`` that may succeed later: the session stays (or is again)
        pending, next tried at ``retry_at_s``. False if the record has changed since:
        the new one stays due now, not put off by the old one's failure."""
        with self._write() as db:
            changed = db.execute(
                "UPDATE outbox SET state='pending', attempts=attempts+1, lease_until_utc=NULL, "
                "last_attempt_utc=?, last_error=?, status=?, next_attempt_utc=?, server=? "
                "WHERE session_id=? AND revision=?",
                (
                    utc_text(now_s),
                    error,
                    status,
                    utc_text(retry_at_s),
                    server,
                    session_id,
                    revision,
                ),
            ).rowcount
            if not changed:
                _superseded(db, session_id, now_s, server)
        return bool(changed)

    def refused(
        self,
        session_id: str,
        now_s: float,
        *,
        error: str,
        status: int,
        server: str,
        revision: int = 0,
    ) -> bool:
        """The server refused ``revision`` of the record itself: kept, with its reason,
        until a person sends it again. False if the record has changed since: the new
        one is pending, due now."""
        with self._write() as db:
            changed = db.execute(
                "UPDATE outbox SET state='refused', attempts=attempts+1, lease_until_utc=NULL, "
                "last_attempt_utc=?, last_error=?, status=?, server=? "
                "WHERE session_id=? AND revision=?",
                (utc_text(now_s), error, status, server, session_id, revision),
            ).rowcount
            if not changed:
                _superseded(db, session_id, now_s, server)
        return bool(changed)
