"""The session journal: durable records in one SQLite file (stdlib sqlite3).

Every event is one transaction (WAL, ``synchronous=FULL``): once ``append``
returns, the event survives a crash or a power cut. "Start requested" is committed
before START is sent, so every period of output has a start record.

By job (issue 20): this module is the store (schema, transactions, writes, reads);
``estim.journal_recovery`` knows which sessions are live in some process (their
liveness locks) and marks those a dead host left ``interrupted``;
``estim.journal_sidecar`` saves what could not be written and imports it. A
session's lock is let go only once its record is safe: finished in the journal, or
saved whole to its sidecar file (``close()`` with a session still being written
keeps it until then).

A journal file deleted or replaced under a live session is noticed at the next
write and by the session's writer at least once a second (``check_file``): the
session stops, and the whole of it goes to the sidecar, which a new journal at
the same path imports. Several processes may open a journal with a sidecar
pending at once: one imports it, the others find it gone.

The file and its directory are created private (0600, 0700): the records concern
patients. No patient name is stored unless someone types one into a free field.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import estim.outbox as outbox
import estim.serve.actions as actions
from estim.errors import EstimError, JournalError
from estim.journal_queries import JournalQueries
from estim.journal_recovery import LivenessLocks, make_room, recover
from estim.journal_sidecar import import_sidecars, sidecar_path, write_sidecar

if TYPE_CHECKING:
    from estim.record import EventRecord


SCHEMA_VERSION = 4

#: migrations[n] takes a database from version n to n + 1
MIGRATIONS: list[str] = [
    """
    CREATE TABLE sessions (
        id            TEXT PRIMARY KEY,
        created_utc   TEXT NOT NULL,
        port          TEXT NOT NULL,
        unit_model    TEXT NOT NULL,
        unit_serial   TEXT NOT NULL,
        unit_firmware TEXT NOT NULL,
        unit_simulated INTEGER NOT NULL,
        plan          TEXT NOT NULL,
        patient_ref   TEXT,
        planned_ms    INTEGER NOT NULL,
        state         TEXT NOT NULL,
        outcome       TEXT,
        stop_reason   TEXT,
        ended_by      TEXT,
        started_utc   TEXT,
        ended_utc     TEXT,
        delivered_ms  INTEGER,
        last_event    TEXT
    );
    CREATE INDEX sessions_created ON sessions (created_utc);
    CREATE INDEX sessions_patient ON sessions (patient_ref);
    CREATE TABLE events (
        session_id TEXT NOT NULL REFERENCES sessions (id),
        n          INTEGER NOT NULL,
        utc        TEXT NOT NULL,
        t          REAL NOT NULL,
        unit_ms    INTEGER,
        kind       TEXT NOT NULL,
        data       TEXT NOT NULL,
        PRIMARY KEY (session_id, n)
    );
    """,
    outbox.MIGRATION,  # 2: the FHIR outbox (estim.outbox)
    actions.MIGRATION,  # 3: the clinic service's action log (estim.serve.actions)
    outbox.REVISIONS,  # 4: a record changed after it was queued is sent again (estim.outbox)
]


#: session ids are u32, never 0; each new one is the last plus 1 to SESSION_ID_STEP
SESSION_ID_MAX = 2**32 - 1
SESSION_ID_STEP = 65_536

#: how long an ordinary write waits for another program's lock on the journal
BUSY_TIMEOUT_MS = 10_000


class NotAJournal(JournalError):
    """The file named is not an estim journal (a wrong ``--db``: bad usage)."""


class JournalBusy(JournalError):
    """Another program holds the journal's write lock right now (try again soon)."""


def _is_busy(err: sqlite3.Error) -> bool:
    code = getattr(err, "sqlite_errorcode", None)  # Python 3.11+
    return code in (5, 6) or "locked" in str(err)  # SQLITE_BUSY, SQLITE_LOCKED


def _open_problem(path: Path, err: sqlite3.Error) -> str:
    """Why a journal could not be opened, in words that say what to do."""
    text = str(err)
    if isinstance(err, sqlite3.DatabaseError) and "not a database" in text:
        return f"{path} is not an estim journal (or it is damaged): {text}; choose another --db"
    if "disk I/O" in text or "full" in text or "readonly" in text or "read-only" in text:
        return (
            f"cannot open the journal {path}: {text}; check that its disk has free space "
            "and is writable"
        )
    return f"cannot open the journal {path}: {text}"


def default_path() -> Path:
    """``$ESTIM_DB``, else ``estim.db`` in estim's application directory."""
    from estim.paths import db_path

    return db_path()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_id(session_id: int) -> str:
    return f"{session_id:08x}"


class Journal(JournalQueries):
    """An open journal. Thread-safe; one connection, one lock."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_path()
        self._lock = threading.RLock()
        #: the file's own path: its liveness locks and sidecars are named from it, so a
        #: program that opens the journal through a symlink sees the same ones
        self._real = self.path.resolve()
        self._liveness = LivenessLocks(self._real.with_name(self._real.name + ".locks"))
        #: sessions whose records a writer (``estim.background``) is still saving
        self.writing: set[str] = set()
        self._counters: dict[str, int] = {}
        self._closed = False
        try:
            self._create_private()
            self._db = sqlite3.connect(
                self.path,
                check_same_thread=False,
                isolation_level=None,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        except (OSError, sqlite3.Error) as err:
            raise JournalError(f"cannot open the journal {self.path}: {err}") from None
        try:
            self._file_id = _file_id(self.path)
            self._wal()
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._liveness.create()  # (not beside a file that turned out not to be a journal)
            self._migrate()
            #: sessions whose final records came back from a sidecar file
            self.imported = import_sidecars(self)
            self.interrupted = recover(self)
        except sqlite3.Error as err:
            self._db.close()
            kind = NotAJournal if "not a database" in str(err) else JournalError
            raise kind(_open_problem(self.path, err)) from None
        except OSError as err:
            self._db.close()
            raise JournalError(f"cannot open the journal {self.path}: {err}") from None
        except BaseException:
            self._db.close()
            raise

    # -- setup -------------------------------------------------------------------------------

    def _create_private(self) -> None:
        directory = self.path.parent
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
        if not self.path.exists():
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                return  # another program made it this very moment
            os.close(fd)

    def _wal(self) -> None:
        """WAL mode, which a new file gets from whichever program opens it first. The
        change does not wait on SQLite's busy handler: another program making the
        same file at the same moment is waited for here, as long as any write waits."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if not _is_busy(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"the journal {self.path} has schema version {version}, newer than this estim "
                f"({SCHEMA_VERSION}); update estim"
            )
        for step in range(version, SCHEMA_VERSION):
            # one transaction per step: a failed migration leaves the previous version intact
            with self._lock:
                try:
                    self._db.executescript(
                        f"BEGIN IMMEDIATE; {MIGRATIONS[step]}; PRAGMA user_version = {step + 1}; COMMIT;"
                    )
                except sqlite3.Error:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    (now,) = self._db.execute("PRAGMA user_version").fetchone()
                    if now > step:
                        continue  # another program took this step while we waited
                    raise

    def check_file(self) -> None:
        """Raise ``JournalError`` if this journal was closed, or its file is gone or
        is another file now: what is written would be lost with the deleted file."""
        if self._closed:
            raise JournalError(f"the journal {self.path} was closed by its program")
        try:
            now = _file_id(self.path)
        except OSError:
            now = None
        if now is None:
            raise JournalError(
                f"the journal {self.path} was deleted while a session was being recorded; "
                "what it held of the session is saved next to it"
            )
        if now != self._file_id:
            raise JournalError(
                f"the journal {self.path} was replaced by another file while a session was "
                "being recorded; what it held of the session is saved next to it"
            )

    @contextlib.contextmanager
    def _transaction(self, *, wait: bool = True) -> Iterator[None]:
        """One transaction. With ``wait=False`` a journal locked by another program
        raises ``JournalBusy`` at once instead of waiting up to 10 s: the session's
        writer retries on its own clock, and the control loop never waits at all.
        A journal file deleted or replaced raises ``JournalError`` (``check_file``)."""
        with self._lock:
            self.check_file()
            if not wait:
                self._db.execute("PRAGMA busy_timeout = 0")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                if not wait and _is_busy(err):
                    raise JournalBusy(
                        f"the journal {self.path} is locked by another program"
                    ) from None
                raise
            finally:
                if not wait:
                    self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _held_elsewhere(self, session_id: str) -> bool:
        return self._liveness.held_elsewhere(session_id)

    def _next_n(self, session_id: str) -> int:
        (n,) = self._db.execute(
            "SELECT COALESCE(MAX(n), -1) + 1 FROM events WHERE session_id=?", (session_id,)
        ).fetchone()
        return int(n)

    # -- writing -------------------------------------------------------------------------------

    def new_session_id(self, above: int = 0) -> int:
        """A session id above ``above``, not used by any session in this journal.

        PROTOCOL.md 10 (1.4): hosts pick increasing ids, so a unit's floor of ended
        ids stays below every new one: ``above`` (the last id the unit ran, or this
        host used on it) plus a random step of 1 to 65,536, so ids stay hard to guess.
        Raises ``EstimError`` if the unit has used the 32-bit range up."""
        rng = random.SystemRandom()
        low = max(0, above) + 1
        while low <= SESSION_ID_MAX:
            candidate = rng.randrange(low, min(low + SESSION_ID_STEP, SESSION_ID_MAX + 1))
            row = self._query("SELECT 1 FROM sessions WHERE id=?", (format_id(candidate),))
            if not row:
                return candidate
            low = candidate + 1
        raise EstimError(
            f"the unit has used session ids up to {above:#010x}, the top of their range, "
            "since it was powered on; power-cycle it to start again"
        )

    def begin(
        self,
        session_id: int,
        *,
        plan: dict[str, Any],
        unit: dict[str, Any],
        port: str,
        planned_ms: int,
        utc: str | None = None,
    ) -> str:
        """Commit "start requested" (event 0, stamped ``utc``). Raises JournalError:
        then the session must not start."""
        sid = format_id(session_id)
        now = utc or utc_now()
        try:
            self._liveness.hold(sid)
            with self._transaction():
                self._insert_session(
                    sid,
                    {
                        "plan": plan,
                        "unit": unit,
                        "port": port,
                        "planned_ms": planned_ms,
                        "utc": now,
                    },
                )
                self._db.execute(
                    "INSERT INTO events (session_id, n, utc, t, unit_ms, kind, data) VALUES (?,?,?,?,?,?,?)",
                    (
                        sid,
                        0,
                        now,
                        0.0,
                        None,
                        "start_requested",
                        json.dumps({"plan": plan, "unit": unit, "port": port}),
                    ),
                )
            self._counters[sid] = 1
        except (OSError, sqlite3.Error) as err:
            self._release_lock(sid)
            raise JournalError(f"cannot write the journal {self.path}: {err}") from None
        return sid

    def _insert_session(self, sid: str, begin: dict[str, Any], *, ignore: bool = False) -> None:
        """The session's row, from ``begin``'s fields (in a transaction)."""
        plan, unit = begin["plan"], begin["unit"]
        verb = "INSERT OR IGNORE" if ignore else "INSERT"
        self._db.execute(
            f"{verb} INTO sessions (id, created_utc, port, unit_model, unit_serial, "
            "unit_firmware, unit_simulated, plan, patient_ref, planned_ms, state, last_event) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                sid,
                begin["utc"],
                begin["port"],
                unit["model"],
                unit["serial_number"],
                unit["firmware"],
                int(bool(unit["simulated"])),
                json.dumps(plan),
                plan.get("patient_ref"),
                begin["planned_ms"],
                "starting",
                "start_requested",
            ),
        )

    def append(
        self,
        session_id: str,
        kind: str,
        data: dict[str, Any] | None = None,
        *,
        t: float = 0.0,
        unit_ms: int | None = None,
        state: str | None = None,
        utc: str | None = None,
    ) -> None:
        """One event, one transaction. Raises JournalError."""
        try:
            with self._transaction():
                n = self._counters.get(session_id)
                if n is None:
                    n = self._next_n(session_id)
                if make_room(self._db, session_id, n):
                    outbox.amend(self._db, session_id, utc_now())
                self._db.execute(
                    "INSERT INTO events (session_id, n, utc, t, unit_ms, kind, data) VALUES (?,?,?,?,?,?,?)",
                    (session_id, n, utc or utc_now(), t, unit_ms, kind, json.dumps(data or {})),
                )
                if state is None:
                    self._db.execute(
                        "UPDATE sessions SET last_event=? WHERE id=?", (kind, session_id)
                    )
                else:
                    self._db.execute(
                        "UPDATE sessions SET last_event=?, state=? WHERE id=?",
                        (kind, state, session_id),
                    )
                self._counters[session_id] = n + 1
        except sqlite3.Error as err:
            raise JournalError(f"cannot write the journal {self.path}: {err}") from None

    def write_event(
        self, session_id: str, event: EventRecord, state: str, *, wait: bool = True
    ) -> None:
        """One event of a session, numbered by the session; one transaction. Writing
        the same event again changes nothing. Raises ``JournalBusy`` (``wait=False``
        only) or ``JournalError``."""
        try:
            with self._transaction(wait=wait):
                if make_room(self._db, session_id, event.n):
                    outbox.amend(self._db, session_id, utc_now())
                self._db.execute(
                    "INSERT OR IGNORE INTO events (session_id, n, utc, t, unit_ms, kind, data) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (
                        session_id,
                        event.n,
                        event.utc,
                        event.t,
                        event.unit_ms,
                        event.kind,
                        json.dumps(event.data),
                    ),
                )
                self._db.execute(
                    "UPDATE sessions SET last_event=?, state=? WHERE id=? AND outcome IS NULL",
                    (event.kind, state, session_id),
                )
                self._counters[session_id] = max(self._counters.get(session_id, 0), event.n + 1)
        except sqlite3.Error as err:
            raise JournalError(f"cannot write the journal {self.path}: {err}") from None

    def finish(
        self,
        session_id: str,
        *,
        outcome: str,
        stop_reason: str,
        ended_by: str | None,
        delivered_ms: int | None,
        started_utc: str | None,
        ended_utc: str | None,
        wait: bool = True,
    ) -> None:
        """The session's outcome; its liveness lock is released once this is durable.

        If another program has meanwhile guessed the session interrupted (it found no
        live writer), the facts replace the guess, as a sidecar's do, and the delivery
        is queued again (``outbox.amend``): the guess may have reached the server."""
        try:
            with self._transaction(wait=wait):
                before = self._db.execute(
                    "SELECT outcome FROM sessions WHERE id=?", (session_id,)
                ).fetchone()
                guessed = outcome != "interrupted" and before == ("interrupted",)
                if guessed:
                    self._db.execute(
                        "DELETE FROM events WHERE session_id=? AND kind='interrupted'",
                        (session_id,),
                    )
                    self._db.execute(
                        "UPDATE sessions SET last_event=(SELECT kind FROM events WHERE "
                        "session_id=? ORDER BY n DESC LIMIT 1) WHERE id=?",
                        (session_id, session_id),
                    )
                self._db.execute(
                    "UPDATE sessions SET state=?, outcome=?, stop_reason=?, ended_by=?, delivered_ms=?, "
                    "started_utc=?, ended_utc=? WHERE id=?",
                    (
                        outcome,
                        outcome,
                        stop_reason,
                        ended_by,
                        delivered_ms,
                        started_utc,
                        ended_utc,
                        session_id,
                    ),
                )
                if guessed:
                    outbox.amend(self._db, session_id, utc_now())
                else:
                    outbox.enqueue(self._db, session_id, utc_now())  # queued as it is finished
        except sqlite3.Error as err:
            raise JournalError(f"cannot write the journal {self.path}: {err}") from None
        self._release_lock(session_id)

    def give_up(self, session_id: str) -> None:
        """This process can write no more of a session (its sidecar holds the rest)."""
        self._release_lock(session_id)

    # -- a sidecar: what could not be written, imported at the next open ---------------------

    def sidecar_path(self, session_id: str) -> Path:
        return sidecar_path(self._real, session_id)

    def write_sidecar(
        self,
        session_id: str,
        events: list[tuple[EventRecord, str]],
        finish: dict[str, Any] | None,
        *,
        begin: dict[str, Any] | None = None,
    ) -> Path:
        """Save what the journal would not take, next to it (``estim.journal_sidecar``).
        Raises OSError."""
        return write_sidecar(self._real, session_id, events, finish, begin=begin)

    @property
    def _locks(self) -> dict[str, int]:
        return self._liveness.fds

    def _release_lock(self, sid: str) -> None:
        self._liveness.release(sid)

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str]) -> Journal:
        """Open a journal that already exists; never creates a file or directory
        (for reading commands: a mistyped path is an error, not a new empty journal)."""
        where = Path(path).expanduser()
        if not where.is_file():
            raise JournalError(
                f"no journal at {where}: nothing has been recorded there; check the path "
                "(--db or $ESTIM_DB)"
            )
        return cls(where)

    # -- closing -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file. A session still being written keeps its liveness lock
        until its writer has saved it (``finish`` or ``give_up``): another program
        opening the journal meanwhile never takes it for a crashed one."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for sid in list(self._locks):
                if sid not in self.writing:
                    self._release_lock(sid)
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_id(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return (info.st_dev, info.st_ino)
