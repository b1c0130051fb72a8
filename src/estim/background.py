"""The two jobs a session must never do on its control loop: writing the journal
and calling the caller's ``on_event``. Each runs on its own thread (started on the
session's clock, so a manual clock waits for them), takes work from a queue that
never blocks the loop, and reports back through callbacks that must not block.

``JournalWriter``: one event per transaction, in order. A journal locked by
another program is retried every ``BUSY_RETRY_S`` on the clock; any other failure
is reported at once (the session then stops output) and retried every
``FAILED_RETRY_S``. While idle it checks every ``CHECK_S`` that the journal is
still open and its file still there (a deleted journal would take every later
write with it). Once the session has ended, if anything is still unwritten after
``FLUSH_S``, the whole session goes to a sidecar file next to the journal, which
the journal (or a new one at the same path) imports the next time it is opened:
nothing the host knew is lost.

``Notifier``: calls ``on_event(record)`` in order; a slow callback delays only
later callbacks, never a heartbeat; one that raises is reported (the session then
stops output, as documented) and is not called again.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from estim.clock import Clock
from estim.errors import JournalError
from estim.journal import Journal, JournalBusy
from estim.record import EventRecord

log = logging.getLogger("estim.background")

_DONE = -1.0
BUSY_RETRY_S = 0.02
FAILED_RETRY_S = 0.2
#: after the session ended: how long to keep trying before the sidecar file
FLUSH_S = 1.0
#: how often an idle writer checks that its journal can still be written
CHECK_S = 1.0


class JournalWriter:
    def __init__(
        self,
        journal: Journal,
        session_id: str,
        clock: Clock,
        *,
        begin: dict[str, Any],
        first: EventRecord,
        on_durable: Callable[[int], None],
        on_failed: Callable[[str], None],
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.journal = journal
        #: ``Journal.begin``'s fields and every record: a sidecar holds the whole session
        self._begin = begin
        self._all: list[tuple[EventRecord, str]] = [(first, "starting")]
        journal.writing.add(session_id)
        self._on_done = on_done
        self.session_id = session_id
        self.clock = clock
        self._on_durable = on_durable
        self._on_failed = on_failed
        self._queue: deque[tuple[EventRecord, str]] = deque()
        self._finish: dict[str, Any] | None = None
        self._finish_at: float | None = None
        self._wake = clock.signal()
        #: set when every record is in the journal or in the sidecar (or lost: see error)
        self.done = clock.signal()
        #: the first failure, if any; where the rest went, once done
        self.error: str | None = None
        self.sidecar: str | None = None
        self._thread = clock.start_thread(self._run, name=f"estim-journal {session_id}")

    def submit(self, record: EventRecord, state: str) -> None:
        self._queue.append((record, state))
        self._all.append((record, state))
        self._wake.set()

    def finish(self, fields: dict[str, Any]) -> None:
        """The session's outcome; after it, the writer flushes and stops."""
        self._finish = fields
        self._finish_at = self.clock.now()
        self._wake.set()

    def _run(self) -> None:
        try:
            self._write_all()
        except BaseException as err:  # never silently: the session must learn it
            log.exception("the journal writer failed")
            self._failed(f"internal error: {err!r}")
            self._to_sidecar()
        finally:
            self.journal.writing.discard(self.session_id)
            self.done.set()
            if self._on_done is not None:
                self._on_done()

    def _write_all(self) -> None:
        while True:
            self._wake.clear()
            retry = self._write_some()
            if retry == _DONE:
                return  # finished and flushed
            if self._finish_at is not None and self.clock.now() - self._finish_at >= FLUSH_S:
                self._to_sidecar()
                return
            if retry is not None:
                self._wake.wait(retry)
            elif not self._wake.wait(CHECK_S) and self._finish is None:
                try:
                    self.journal.check_file()
                except JournalError as err:
                    self._failed(str(err))

    def _write_some(self) -> float | None:
        """Write what is queued. Returns the seconds to wait before trying again,
        None to wait for more work, or ``_DONE`` once the outcome is written."""
        while self._queue:
            record, state = self._queue[0]
            retry = self._attempt(
                partial(self.journal.write_event, self.session_id, record, state, wait=False)
            )
            if retry is not None:
                return retry
            self._queue.popleft()
            self._on_durable(record.n)
        if self._finish is None:
            return None  # woken by the next submit
        finish = self._finish
        retry = self._attempt(partial(self.journal.finish, self.session_id, wait=False, **finish))
        return _DONE if retry is None else retry

    def _attempt(self, write: Callable[[], None]) -> float | None:
        try:
            write()
        except JournalBusy:
            return BUSY_RETRY_S
        except JournalError as err:
            self._failed(str(err))
            return FAILED_RETRY_S
        return None

    def _failed(self, error: str) -> None:
        if self.error is None:
            self.error = error
            self._on_failed(error)

    def _to_sidecar(self) -> None:
        try:
            path = self.journal.write_sidecar(
                self.session_id, self._all, self._finish, begin=self._begin
            )
        except OSError as err:
            self.error = (
                f"{self.error or 'the journal failed'}; and the sidecar file failed too: {err}"
            )
            return
        self.sidecar = str(path)
        self.error = f"{self.error or 'the journal could not be written'}; saved to {path}, imported when the journal is next opened"
        self.journal.give_up(self.session_id)
        self._queue.clear()


class Notifier:
    def __init__(
        self,
        on_event: Callable[[EventRecord], None],
        name: str,
        clock: Clock,
        *,
        on_failed: Callable[[str], None],
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self._on_event = on_event
        self._on_done = on_done
        self._on_failed = on_failed
        self._queue: deque[EventRecord] = deque()
        self._ending = False
        self._wake = clock.signal()
        #: set once every record was handed over (or a callback raised)
        self.done = clock.signal()
        self._thread = clock.start_thread(self._run, name=f"estim-events {name}")

    def submit(self, record: EventRecord) -> None:
        self._queue.append(record)
        self._wake.set()

    def finish(self) -> None:
        self._ending = True
        self._wake.set()

    def _run(self) -> None:
        try:
            while True:
                self._wake.clear()
                while self._queue:
                    record = self._queue.popleft()
                    try:
                        self._on_event(record)
                    except Exception as err:
                        self._on_failed(repr(err))
                        return
                if self._ending:
                    return
                self._wake.wait(None)
        finally:
            self.done.set()
            if self._on_done is not None:
                self._on_done()
