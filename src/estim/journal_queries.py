"""The journal's reads (``estim.journal``): rows as dicts for the CLI and the
service, and the public read API a charting app uses, ``get`` (an id or a unique
prefix) and ``query`` (filters, newest first), both giving ``SessionRecord``s built
by the same function that builds the live record, so the two can never disagree.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from estim.errors import JournalError, SessionNotFound

if TYPE_CHECKING:
    from estim.record import SessionRecord


class JournalQueries:
    """Reading an open journal (mixed into ``estim.journal.Journal``)."""

    path: Path
    _db: sqlite3.Connection
    _lock: threading.RLock

    # -- reading ---------------------------------------------------------------------------------

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        try:
            with self._lock:
                cursor = self._db.execute(sql, args)
                cursor.row_factory = sqlite3.Row
                return list(cursor.fetchall())
        except sqlite3.Error as err:
            raise JournalError(f"cannot read the journal {self.path}: {err}") from None

    def session_row(self, session_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM sessions WHERE id=?", (session_id,))
        return dict(rows[0]) if rows else None

    def event_rows(self, session_id: str) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM events WHERE session_id=? ORDER BY n", (session_id,))
        out = []
        for row in rows:
            item = dict(row)
            item["data"] = json.loads(item["data"])
            out.append(item)
        return out

    def session_rows(
        self,
        *,
        since: str | None = None,
        patient_ref: str | None = None,
        unit_serial: str | None = None,
        outcome: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        clauses, args = [], []
        for column, value in (
            ("created_utc >= ?", since),
            ("patient_ref = ?", patient_ref),
            ("unit_serial = ?", unit_serial),
        ):
            if value is not None:
                clauses.append(column)
                args.append(value)
        if outcome is not None:
            if outcome == "live":
                clauses.append("outcome IS NULL")
            else:
                clauses.append("outcome = ?")
                args.append(outcome)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM sessions {where} ORDER BY created_utc DESC, rowid DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [dict(r) for r in self._query(sql, tuple(args))]

    # -- the public read API -------------------------------------------------------------------

    def get(self, session_id: str) -> SessionRecord:
        """The record of one session, by its id or a unique prefix of it (any case).
        Raises SessionNotFound if no session, or more than one, matches."""
        shown_key = session_id.strip()
        key = shown_key.lower()
        ids = []
        if key and all(c in "0123456789abcdef" for c in key):
            rows = self._query(
                "SELECT id FROM sessions WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT 6",
                (len(key), key),
            )
            ids = [row["id"] for row in rows]
            if key in ids:
                ids = [key]
        if not ids:
            raise SessionNotFound(f"session {shown_key!r}: no such session; see estim history")
        if len(ids) > 1:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            count = "6 or more" if len(ids) > 5 else str(len(ids))
            raise SessionNotFound(
                f"session {shown_key!r}: {count} sessions start with it ({shown}); give more digits"
            )
        return self._record(ids[0])

    def query(
        self,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        patient: str | None = None,
        clinician: str | None = None,
        unit: str | None = None,
        outcome: str | None = None,
        limit: int | None = None,
    ) -> list[SessionRecord]:
        """Records of the sessions that match every filter given, newest first.

        ``since`` (inclusive) and ``until`` (exclusive) compare with the time the
        session was started (requested); each is a datetime or an ISO 8601 date or
        time, and one without a UTC offset is local time. ``patient``, ``clinician``
        and ``unit`` (the unit's serial number) match exactly; ``outcome`` is an
        outcome or ``"live"`` for sessions still running.
        """
        clauses, args = [], []
        for clause, value in (
            ("created_utc >= ?", None if since is None else _utc_text(since, "since")),
            ("created_utc < ?", None if until is None else _utc_text(until, "until")),
            ("patient_ref = ?", patient),
            ("json_extract(plan, '$.clinician') = ?", clinician),
            ("unit_serial = ?", unit),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        if outcome == "live":
            clauses.append("outcome IS NULL")
        elif outcome is not None:
            clauses.append("outcome = ?")
            args.append(outcome)
        sql = "SELECT id FROM sessions"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created_utc DESC, rowid DESC"
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit {limit} is below 1; give at least 1, or None for all")
            sql += f" LIMIT {int(limit)}"
        return [self._record(row["id"]) for row in self._query(sql, tuple(args))]

    def _record(self, session_id: str) -> SessionRecord:
        from estim.record import SessionRecord

        row = self.session_row(session_id)
        if row is None:  # pragma: no cover - the id came from the journal a moment ago
            raise SessionNotFound(f"session {session_id!r}: no such session")
        return SessionRecord.from_journal(row, self.event_rows(session_id))


def _utc_text(value: datetime | str, what: str) -> str:
    """The journal's own UTC text for a datetime or an ISO 8601 string (no offset: local)."""
    when = value
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{what} {value!r} is not an ISO 8601 date or time (2026-11-22, 2026-11-22T09:00)"
            ) from None
    if not isinstance(when, datetime):
        raise ValueError(f"{what} {value!r} is not a datetime or an ISO 8601 string")
    if when.tzinfo is None:
        when = when.astimezone()  # a time without an offset is the machine's local time
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
