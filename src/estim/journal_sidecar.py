"""The journal's sidecar files (``estim.journal``): what a session's writer could
not put in the journal (it was locked too long, full, deleted, closed) is saved
whole next to it, 0600, written whole or not at all; the next ``Journal`` opened
at that path imports it. Several processes may open a journal with a sidecar
pending at once: one imports it under the import lock, the others find it gone. A
session marked interrupted meanwhile (by a host that could not know it was alive)
gets its real end from the sidecar: the facts replace the guess.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import estim.outbox as outbox
from estim.errors import JournalError
from estim.journal_recovery import Store, make_room, utc_now

if TYPE_CHECKING:
    from estim.record import EventRecord

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


def sidecar_path(db: Path, session_id: str) -> Path:
    return db.with_name(f"{db.name}.pending-{session_id}.json")


def write_sidecar(
    db: Path,
    session_id: str,
    events: list[tuple[EventRecord, str]],
    finish: dict[str, Any] | None,
    *,
    begin: dict[str, Any] | None = None,
) -> Path:
    """Save what the journal would not take, next to it (0600, written whole or
    not at all). The next ``Journal`` opened on this file imports it; with
    ``begin`` (``Journal.begin``'s fields) and every event, it holds the whole
    session, for a journal that lost it. Raises OSError."""
    path = sidecar_path(db, session_id)
    body = {
        "session_id": session_id,
        "begin": begin,
        "events": [{**e.model_dump(mode="json"), "state": state} for e, state in events],
        "finish": finish,
    }
    temp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(temp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return path


def import_sidecars(journal: Store) -> list[str]:
    """Import every sidecar next to this journal, one process at a time (others
    that open the journal meanwhile wait for the import lock, then find the files
    gone). A session a sidecar finishes that was marked interrupted meanwhile
    (by a host that could not know it was alive) gets its real end."""
    db = journal.path.resolve()  # (the file's own name: see Journal._real)
    pending = sorted(db.parent.glob(f"{db.name}.pending-*.json"))
    if not pending:
        return []
    with _import_lock(journal._liveness.directory / "import"):
        return [sid for path in pending if (sid := _import_sidecar(journal, path))]


@contextlib.contextmanager
def _import_lock(path: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _queue(db: sqlite3.Connection, sid: str, *, finished: bool, changed: bool) -> None:
    """Once a sidecar is in: a session it finished is queued; a session that was
    queued already (a guess of "interrupted", or a record finished before its last
    events came in) whose record the import changed is queued again one revision on
    (``outbox.amend``): the older record may be on the clinic's server already."""
    queued = db.execute("SELECT 1 FROM outbox WHERE session_id=?", (sid,)).fetchone()
    if queued and changed:
        outbox.amend(db, sid, utc_now())
    elif finished:
        outbox.enqueue(db, sid, utc_now())  # queued as it is finished


def _import_sidecar(journal: Store, path: Path) -> str | None:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        sid = str(body["session_id"])
        with journal._transaction():
            begin = body.get("begin")
            if begin is not None:
                journal._insert_session(sid, begin, ignore=True)
            finish = body["finish"]
            guessed = journal._db.execute(
                "SELECT 1 FROM sessions WHERE id=? AND outcome='interrupted'", (sid,)
            ).fetchone()
            if guessed and finish is not None:  # the facts replace the guess
                journal._db.execute(
                    "DELETE FROM events WHERE session_id=? AND kind='interrupted'", (sid,)
                )
                journal._db.execute(
                    "UPDATE sessions SET outcome=NULL WHERE id=? AND outcome='interrupted'",
                    (sid,),
                )
            added = 0  # events the journal did not have
            for e in body["events"]:
                make_room(journal._db, sid, e["n"])
                added += journal._db.execute(
                    "INSERT OR IGNORE INTO events (session_id, n, utc, t, unit_ms, kind, "
                    "data) VALUES (?,?,?,?,?,?,?)",
                    (
                        sid,
                        e["n"],
                        e["utc"],
                        e["t"],
                        e["unit_ms"],
                        e["kind"],
                        json.dumps(e["data"]),
                    ),
                ).rowcount
            if body["events"]:
                last = body["events"][-1]
                journal._db.execute(
                    "UPDATE sessions SET last_event=?, state=? WHERE id=? AND outcome IS NULL",
                    (last["kind"], last["state"], sid),
                )
            finished = 0
            if finish is not None:
                finished = journal._db.execute(
                    "UPDATE sessions SET state=?, outcome=?, stop_reason=?, ended_by=?, "
                    "delivered_ms=?, started_utc=?, ended_utc=? WHERE id=? AND outcome IS NULL",
                    (
                        finish["outcome"],
                        finish["outcome"],
                        finish["stop_reason"],
                        finish["ended_by"],
                        finish["delivered_ms"],
                        finish["started_utc"],
                        finish["ended_utc"],
                        sid,
                    ),
                ).rowcount
            _queue(journal._db, sid, finished=bool(finished), changed=bool(added or finished))
    except FileNotFoundError:
        return None  # imported by another process meanwhile
    except (OSError, ValueError, KeyError, TypeError, sqlite3.Error, JournalError):
        return None  # left for the next open; the session is not marked interrupted
    path.unlink(missing_ok=True)
    return sid
