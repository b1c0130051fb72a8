"""The outbox's sender: delivers each queued session to the clinic's FHIR server as one
transaction Bundle, exactly once as far as the server can tell.

Exactly once: every entry is a conditional create on the session's identifiers
(``estim.export.as_fhir``), so a try whose answer was lost, or a second sender's
resend, creates nothing new; a session is only marked ``sent`` once the server has
answered its whole transaction, so none is lost. A try that fails is tried again
after a backoff (or the server's ``Retry-After``), recorded in the journal, so it
survives a restart; a permanent refusal is kept with its reason (``estim.outbox``).

The sender never runs on a session's control loop: ``estim push`` runs it in its own
process, ``BackgroundSender`` on a thread and a journal connection of its own (the
clinic service), and neither holds the journal's lock while it waits on the network. Time comes from
``clock`` (seconds since the epoch), so tests run hours of backoff at once.

    from estim.sender import Sender
    sender = Sender(journal, load_config().fhir)
    sender.send_due()            # every queued session whose next try is due
    sender.send(["feed92b4"])    # these, now, whatever their state (by hand)
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from estim import fhir_client
from estim.config import FhirSettings
from estim.errors import JournalError
from estim.journal import Journal
from estim.outbox import SUPERSEDED, Outbox, utc_text


@dataclass(frozen=True)
class Backoff:
    """Seconds before try ``n + 1`` after ``n`` failed ones: ``first_s`` doubling each
    time up to ``most_s``, spread by +-``jitter`` so that many workstations coming back
    after an outage do not all retry in the same second."""

    first_s: float = 10.0
    factor: float = 2.0
    most_s: float = 3600.0
    jitter: float = 0.2

    def delay(self, failed: int, rng: random.Random) -> float:
        base = min(self.most_s, self.first_s * self.factor ** max(0, failed - 1))
        return base * (1 + self.jitter * (2 * rng.random() - 1))


@dataclass(frozen=True)
class Attempt:
    """What one try did."""

    session_id: str
    verdict: str  # sent | refused | retry | busy (another sender holds it)
    detail: str
    status: int | None = None
    next_attempt_utc: str | None = None  # retry: when it will be tried again
    location: str | None = None  # sent: the Procedure on the server


class Sender:
    """Delivers the outbox of ``journal`` to ``settings.base_url``."""

    def __init__(
        self,
        journal: Journal,
        settings: FhirSettings,
        *,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.journal = journal
        self.outbox = Outbox(journal)
        self.settings = settings
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.systems = settings.systems()
        #: a claim outlives one try: the request's timeout twice, and a margin
        self.lease_s = 2 * settings.timeout_s + 30

    # -- what to send --------------------------------------------------------------------------

    def send_due(self) -> list[Attempt]:
        """Try every queued session whose next try is due, oldest first."""
        attempts = []
        for session_id in self.outbox.due(self.clock()):
            if self.outbox.claim(session_id, self.clock(), self.lease_s, by_hand=False):
                attempts.append(self._try(session_id))
        return attempts

    def send_pending(self) -> list[Attempt]:
        """Try every queued session now, whenever its next try was due (by hand)."""
        return self.send(self.outbox.pending())

    def send(self, session_ids: Sequence[str]) -> list[Attempt]:
        """Try these sessions now, whatever their state: a refused one again (after its
        cause was fixed), a sent one again (the server keeps one copy); a finished session
        recorded before the outbox existed is queued first. Raises ``SessionNotFound`` or
        ``JournalError`` (a session still live) before sending anything."""
        ids = [self.journal.get(s).id for s in session_ids]  # full ids; raises if unknown
        for session_id in ids:
            if self.outbox.get(session_id) is None:
                self.outbox.add(session_id, self.clock())
        attempts = []
        for session_id in dict.fromkeys(ids):
            if self.outbox.claim(session_id, self.clock(), self.lease_s, by_hand=True):
                attempts.append(self._try(session_id))
            else:
                attempts.append(
                    Attempt(session_id, "busy", "another sender is sending it right now")
                )
        return attempts

    def seconds_until_due(self) -> float | None:
        """Seconds until the earliest queued session may be tried (0 if one is due now),
        None if nothing is queued."""
        when = self.outbox.next_due_utc()
        if when is None:
            return None
        from estim.words import parse_utc

        return max(0.0, parse_utc(when).timestamp() - self.clock())

    # -- one try -------------------------------------------------------------------------------

    def _try(self, session_id: str) -> Attempt:
        """Send one session: its transactions in order (one, unless it has more entries
        than ``MOST_ENTRIES``), each later one pointing at what the earlier ones filed."""
        from estim.export.as_fhir import point_at, session_transactions

        row = self.outbox.get(session_id)
        revision = row.revision if row is not None else 0
        record = self.journal.get(session_id)
        try:
            parts = session_transactions(record, self.systems, update=revision > 0)
        except Exception as err:  # a record estim cannot express: a bug, kept in view
            return self._retry(
                session_id, revision, f"estim could not build the bundle: {err!r}", None, None
            )
        filed: dict[str, str] = {}
        for part in parts:
            verdict = self._post(point_at(part, filed))
            if verdict.kind != "sent":
                break
            urls = [e["fullUrl"] for e in part["entry"]]
            filed.update(zip(urls, verdict.locations, strict=True))
        now = self.clock()
        server = self.settings.base_url
        changed = SUPERSEDED
        if verdict.kind == "sent":
            procedure = next((v for v in filed.values() if v.startswith("Procedure/")), None)
            status = verdict.status or 200
            if not self.outbox.sent(
                session_id, now, server=server, location=procedure, status=status, revision=revision
            ):
                return Attempt(session_id, "retry", changed, status, utc_text(now))
            return Attempt(session_id, "sent", verdict.detail, verdict.status, None, procedure)
        if verdict.kind == "refused":
            status = verdict.status or 400
            if not self.outbox.refused(
                session_id,
                now,
                error=verdict.detail,
                status=status,
                server=server,
                revision=revision,
            ):
                return Attempt(session_id, "retry", changed, status, utc_text(now))
            return Attempt(session_id, "refused", verdict.detail, status)
        return self._retry(
            session_id, revision, verdict.detail, verdict.status, verdict.retry_after_s
        )

    def _post(self, bundle: dict[str, Any]) -> fhir_client.Verdict:
        body = json.dumps(bundle, ensure_ascii=False).encode()
        try:
            answer = fhir_client.post(
                self.settings.base_url,
                body,
                token=self.settings.bearer(),
                timeout_s=self.settings.timeout_s,
            )
        except fhir_client.Unreachable as err:
            return fhir_client.Verdict("retry", str(err))
        return fhir_client.judge(answer, entries=len(bundle["entry"]))

    def _retry(
        self,
        session_id: str,
        revision: int,
        error: str,
        status: int | None,
        retry_after_s: float | None,
    ) -> Attempt:
        now = self.clock()
        row = self.outbox.get(session_id)
        failed = (row.attempts if row else 0) + 1
        wait = self.backoff.delay(failed, self.rng)
        if retry_after_s is not None:
            wait = max(wait, retry_after_s)
        if not self.outbox.failed(
            session_id,
            now,
            error=error,
            status=status,
            retry_at_s=now + wait,
            server=self.settings.base_url,
            revision=revision,
        ):
            return Attempt(session_id, "retry", SUPERSEDED, status, utc_text(now))
        return Attempt(session_id, "retry", error, status, utc_text(now + wait))


class BackgroundSender:
    """A ``Sender`` on a thread of its own, on a journal connection of its own: it sends
    what is due, then sleeps until the next try is due, ``wake()`` is called (a session
    just finished) or ``idle_s`` passes (another process may have queued one).
    ``stop()`` ends it between tries.

    Its own connection, because a transaction may wait on the database (up to the
    journal's busy timeout, when another program holds it) while holding its
    connection's lock: never the lock a live session's journal writer needs."""

    def __init__(
        self,
        journal_path: str | os.PathLike[str],
        settings: FhirSettings,
        *,
        idle_s: float = 60.0,
        **sender_options: Any,
    ) -> None:
        self.journal_path = journal_path
        self.settings = settings
        self.idle_s = idle_s
        self.sender_options = sender_options
        self.errors: list[str] = []  # what went wrong, newest last (kept, not raised)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="estim-fhir-sender", daemon=True)

    def start(self) -> BackgroundSender:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            journal = Journal(self.journal_path)
        except JournalError as err:
            self.errors.append(str(err))
            return
        with journal:
            sender = Sender(journal, self.settings, **self.sender_options)
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    sender.send_due()
                    due = sender.seconds_until_due()
                except Exception as err:  # kept in view; the next round tries again
                    self.errors.append(f"{type(err).__name__}: {err}")
                    due = None
                self._wake.wait(self.idle_s if due is None else min(due, self.idle_s))
