"""The FHIR outbox in the journal (no server needed): every finished session is queued by
the very transaction that finishes it, whichever way it finishes; what a sender
records survives a reopen; two senders never hold one session; the answers of a
server are judged as the outbox needs; the sender is nowhere near the control loop."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from estim import fhir_client
from estim.config import FhirSettings
from estim.errors import JournalError
from estim.journal import SCHEMA_VERSION, Journal
from estim.outbox import SUPERSEDED, Outbox, utc_text
from estim.record import EventRecord, SessionRecord
from estim.sender import Backoff, Sender

from .outbox_helpers import COMPLETED, WallClock, copy_session, guessable
from .records_helpers import varied_journal
from .test_imports import graph

UNIT = {"model": "estim-sim", "serial_number": "SIM-0001", "firmware": "sim-1", "simulated": True}


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> list[SessionRecord]:
    return varied_journal(tmp_path_factory.mktemp("templates") / "estim.db")


def queued(path: Path) -> dict[str, str]:
    with Journal(path) as journal:
        rows = journal._db.execute("SELECT session_id, state FROM outbox").fetchall()
    return dict(rows)


def test_a_session_is_queued_when_it_finishes_and_not_before(
    tmp_path: Path, templates: list[SessionRecord]
) -> None:
    path = tmp_path / "estim.db"
    with Journal(path) as journal:
        live = copy_session(
            journal, templates[0], 1, serial="S1", created=datetime.now(timezone.utc), finish=False
        )
        assert Outbox(journal).get(live) is None
        done = copy_session(
            journal, templates[1], 2, serial="S1", created=datetime.now(timezone.utc)
        )
        delivery = Outbox(journal).get(done)
        assert delivery is not None
        assert (delivery.state, delivery.attempts) == ("pending", 0)
        assert delivery.words() == "queued, not yet sent"


def test_finishing_and_queueing_are_one_transaction(
    tmp_path: Path, templates: list[SessionRecord]
) -> None:
    """If the outbox row cannot be written, the session is not finished either: the
    next open finishes it from its journaled "ended" event and queues it then."""
    path = tmp_path / "estim.db"
    journal = Journal(path)
    sid = copy_session(
        journal, templates[0], 1, serial="S1", created=datetime.now(timezone.utc), finish=False
    )
    journal._db.execute("DROP TABLE outbox")
    with pytest.raises(JournalError):
        journal.finish(
            sid,
            outcome="completed",
            stop_reason="done",
            ended_by="unit",
            delivered_ms=60000,
            started_utc=None,
            ended_utc=None,
        )
    assert journal.session_row(sid)["outcome"] is None  # type: ignore[index]
    journal._db.executescript(
        __import__("estim.outbox", fromlist=["MIGRATION"]).MIGRATION
    )  # the table back, as a repaired file would have it
    journal.close()  # (the process dies: its lock goes)
    with Journal(path) as again:
        assert again.interrupted == []
        assert again.get(sid).outcome == templates[0].outcome
    assert queued(path) == {sid: "pending"}


def test_an_interrupted_session_is_queued_for_delivery(tmp_path: Path) -> None:
    """The host died mid-session: on the next open the session is marked interrupted and
    queued, because the clinic's record must show that current may have been delivered."""
    path = tmp_path / "estim.db"
    crashed = Journal(path)
    sid = crashed.begin(0xABC, plan=_plan(), unit=UNIT, port="sim://", planned_ms=60000)
    crashed.append(sid, "output_started", {"dwell_ms": 60000, "channel_mask": 1}, unit_ms=0)
    os.close(crashed._locks.pop(sid))
    crashed._db.close()
    with Journal(path) as journal:
        assert journal.interrupted == [sid]
    assert queued(path) == {sid: "pending"}


def test_a_session_finished_through_a_sidecar_is_queued_when_imported(
    tmp_path: Path, templates: list[SessionRecord]
) -> None:
    path = tmp_path / "estim.db"
    journal = Journal(path)
    sid = copy_session(
        journal, templates[0], 1, serial="S1", created=datetime.now(timezone.utc), finish=False
    )
    journal.write_sidecar(
        sid,
        [],
        {
            "outcome": "completed",
            "stop_reason": "the dwell is complete",
            "ended_by": "unit",
            "delivered_ms": 60000,
            "started_utc": None,
            "ended_utc": None,
        },
    )
    journal.give_up(sid)
    journal.close()
    assert queued(path) == {sid: "pending"}


def test_a_journal_from_before_the_outbox_is_migrated_and_its_sessions_can_be_queued(
    tmp_path: Path, templates: list[SessionRecord]
) -> None:
    """Version 1 journals get the table; their sessions are not queued on their own (a
    clinic decides: ``estim push --since``), and a new one is."""
    path = tmp_path / "old.db"
    with Journal(path) as journal:
        old = copy_session(
            journal, templates[0], 1, serial="S1", created=datetime.now(timezone.utc)
        )
        journal._db.executescript("DROP TABLE outbox; DROP TABLE actions; PRAGMA user_version = 1;")
    with Journal(path) as journal:
        assert journal._db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        outbox = Outbox(journal)
        assert outbox.get(old) is None
        outbox.add(old, WallClock()())
        assert outbox.pending() == [old]
        live = copy_session(
            journal, templates[0], 2, serial="S1", created=datetime.now(timezone.utc), finish=False
        )
        with pytest.raises(JournalError, match="still live; it is queued when it ends"):
            outbox.add(live, WallClock()())


def test_what_a_sender_records_survives_a_reopen(
    tmp_path: Path, templates: list[SessionRecord]
) -> None:
    path = tmp_path / "estim.db"
    with Journal(path) as journal:
        a, b, c = (
            copy_session(
                journal, templates[i], i + 1, serial="S1", created=datetime.now(timezone.utc)
            )
            for i in range(3)
        )
        outbox, clock = Outbox(journal), WallClock()  # (the clock: after they were queued)
        for sid in (a, b, c):
            assert outbox.claim(sid, clock(), 60, by_hand=False)
        outbox.sent(a, clock(), server="https://x", location="Procedure/1", status=200)
        outbox.failed(
            b,
            clock(),
            error="HTTP 503: busy",
            status=503,
            retry_at_s=clock() + 40,
            server="https://x",
        )
        outbox.refused(
            c, clock(), error="HTTP 412: multiple-matches", status=412, server="https://x"
        )
    with Journal(path) as journal:
        outbox = Outbox(journal)
        states = outbox.deliveries([a, b, c])
        assert {s: d.state for s, d in states.items()} == {a: "sent", b: "pending", c: "refused"}
        assert states[b].next_attempt_utc == utc_text(clock() + 40)
        assert "REFUSED by the server (412)" in states[c].words()
        assert outbox.due(clock()) == []  # b waits its backoff; a and c are not pending
        assert outbox.due(clock() + 40) == [b]
        assert outbox.counts() == {"pending": 1, "sent": 1, "refused": 1}


def test_two_senders_never_hold_one_session(tmp_path: Path, templates: list[SessionRecord]) -> None:
    path = tmp_path / "estim.db"
    with Journal(path) as first, Journal(path) as second:  # two processes' connections
        sid = copy_session(first, templates[0], 1, serial="S1", created=datetime.now(timezone.utc))
        clock = WallClock()
        assert Outbox(first).claim(sid, clock(), 90, by_hand=False)
        assert not Outbox(second).claim(sid, clock(), 90, by_hand=False)
        assert not Outbox(second).claim(sid, clock(), 90, by_hand=True)
        assert Outbox(second).due(clock()) == []
        # a sender that died leaves its claim; it lapses
        assert Outbox(second).claim(sid, clock() + 90, 90, by_hand=False)


def test_backoff_doubles_to_its_cap_with_a_bounded_spread() -> None:
    backoff, rng = Backoff(first_s=10, most_s=3600, jitter=0.2), random.Random(1)
    for failed, base in [(1, 10), (2, 20), (3, 40), (8, 1280), (9, 2560), (10, 3600), (30, 3600)]:
        delays = [backoff.delay(failed, rng) for _ in range(200)]
        assert base * 0.8 <= min(delays) < base * 0.85
        assert base * 1.15 < max(delays) <= base * 1.2


def _bundle(entries: int, status: str = "201 Created") -> bytes:
    return json.dumps(
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {"response": {"status": status, "location": f"{kind}/{i}"}}
                for i, kind in enumerate(["Device", "Procedure", *["Observation"] * (entries - 2)])
            ],
        }
    ).encode()


def _outcome(text: str) -> bytes:
    issue = {"severity": "error", "code": "processing", "details": {"text": text}}
    return json.dumps({"resourceType": "OperationOutcome", "issue": [issue]}).encode()


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "words"),
    [
        (200, {}, _bundle(4), "sent", "HTTP 200"),
        (200, {}, _bundle(4, "200 OK"), "sent", "HTTP 200"),
        (200, {}, _bundle(3), "retry", "3 entries for the 4 sent"),
        (200, {}, _bundle(4, "400 Bad Request"), "retry", "an entry was answered 400"),
        (200, {"content-type": "text/html"}, b"<html>proxy login</html>", "retry", "not a Bundle"),
        (400, {}, _outcome("bad identifier"), "refused", "HTTP 400: processing: bad identifier"),
        (412, {}, _outcome("Multiple resources found"), "refused", "HTTP 412"),
        (422, {}, _outcome("unprocessable"), "refused", "HTTP 422"),
        (
            400,
            {"content-type": "text/html"},
            b"<h1>Bad Request</h1>",
            "retry",
            "not a FHIR OperationOutcome",
        ),
        (401, {}, _outcome("no token"), "retry", "check the [fhir] token"),
        (403, {}, _outcome("forbidden"), "retry", "check the [fhir] token's rights"),
        (404, {}, _outcome("not found"), "retry", "check [fhir] base_url"),
        (429, {"retry-after": "120"}, _outcome("slow down"), "retry", "HTTP 429"),
        (500, {}, _outcome("boom"), "retry", "HTTP 500: processing: boom"),
        (503, {"retry-after": "7"}, b"", "retry", "HTTP 503"),
    ],
)
def test_what_an_answer_means(
    status: int, headers: dict[str, str], body: bytes, kind: str, words: str
) -> None:
    verdict = fhir_client.judge(fhir_client.Answer(status, headers, body), entries=4)
    assert verdict.kind == kind
    assert words in verdict.detail
    assert "\n" not in verdict.detail
    if kind == "sent":
        assert verdict.locations == ("Device/0", "Procedure/1", "Observation/2", "Observation/3")
    if "retry-after" in headers:
        assert verdict.retry_after_s == float(headers["retry-after"])


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc).timestamp()
    assert fhir_client.retry_after("Sun, 22 Nov 2026 09:02:00 GMT", now_s=now) == 120.0
    assert fhir_client.retry_after("Sun, 22 Nov 2026 08:00:00 GMT", now_s=now) == 0.0
    assert fhir_client.retry_after("soon") is None
    assert fhir_client.retry_after("99999999") == 86400.0


def test_a_server_that_is_not_there_is_retried_with_backoff(
    tmp_path: Path, templates: list[SessionRecord]
) -> None:
    """A real refused connection (a closed port on this machine), not a stand-in."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = FhirSettings(base_url=f"http://127.0.0.1:{port}/fhir", timeout_s=5)
    with Journal(tmp_path / "estim.db") as journal:
        sid = copy_session(
            journal, templates[0], 1, serial="S1", created=datetime.now(timezone.utc)
        )
        clock = WallClock()
        sender = Sender(journal, settings, clock=clock, rng=random.Random(3))
        (attempt,) = sender.send_due()
        assert (attempt.verdict, attempt.session_id) == ("retry", sid)
        assert "connection refused" in attempt.detail
        assert sender.send_due() == []  # not due again before its backoff
        wait = sender.seconds_until_due()
        assert wait is not None
        assert 8 <= wait <= 12
        clock.advance(wait)
        (again,) = sender.send_due()
        assert again.verdict == "retry"
        delivery = Outbox(journal).get(sid)
        assert delivery is not None
        assert (delivery.state, delivery.attempts) == ("pending", 2)
        assert 16 <= (sender.seconds_until_due() or 0) <= 24  # doubled


def test_the_sender_is_never_on_the_control_loop() -> None:
    """Nothing the runners, the core or the session policy import (at import or later)
    reaches the sender or HTTP; the journal reaches only the outbox's SQL."""
    edges = graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), set()) - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    for loop in (
        "estim.device",
        "estim.aio",
        "estim.core",
        "estim.policy",
        "estim.session",
        "estim.background",
        "estim.journal",
    ):
        assert not reach(loop) & {"estim.sender", "estim.fhir_client"}, loop


def _plan() -> dict[str, object]:
    return {
        "dwell": 60,
        "ramp": 5,
        "channels": [{"channel": 1, "frequency_hz": 2, "pulse_width_us": 250, "amplitude_ma": 5}],
    }


def test_the_journal_file_still_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "estim.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(
        JournalError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this estim"
    ):
        Journal(path)


def test_where_an_entry_was_filed_is_read_in_the_forms_servers_write_it() -> None:
    def answer(*locations: str) -> fhir_client.Answer:
        entries = [{"response": {"status": "201 Created", "location": loc}} for loc in locations]
        body = {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
        return fhir_client.Answer(200, {}, json.dumps(body).encode())

    verdict = fhir_client.judge(
        answer("Procedure/1/_history/2", "https://fhir.example/R4/Observation/ab-3/_history/1"),
        entries=2,
    )
    assert verdict.locations == ("Procedure/1", "Observation/ab-3")
    missing = fhir_client.judge(answer("Procedure/1", ""), entries=2)
    assert missing.kind == "retry"
    assert "without the location where it was filed" in missing.detail


def test_a_redirect_is_not_followed_and_the_token_goes_nowhere_else() -> None:
    """A server that answers 302 (a login page, a moved server): estim tries again later
    and says why; the place it points to never hears from estim (nor gets the token)."""
    import http.server
    import threading

    heard: list[str] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            heard.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    class Redirecting(Elsewhere):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.server_port}/login")
            self.send_header("Content-Length", "0")
            self.end_headers()

    elsewhere = http.server.HTTPServer(("127.0.0.1", 0), Elsewhere)
    redirecting = http.server.HTTPServer(("127.0.0.1", 0), Redirecting)
    threads = [
        threading.Thread(target=s.serve_forever, daemon=True) for s in (elsewhere, redirecting)
    ]
    for thread in threads:
        thread.start()
    try:
        answer = fhir_client.post(
            f"http://127.0.0.1:{redirecting.server_port}/fhir",
            b"{}",
            token="s3cret",
            timeout_s=10,
        )
    finally:
        for server in (elsewhere, redirecting):
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join()
    verdict = fhir_client.judge(answer, entries=1)
    assert (verdict.kind, verdict.status) == ("retry", 302)
    assert "the server redirects: check [fhir] base_url" in verdict.detail
    assert heard == []


def test_a_guess_of_interrupted_already_sent_is_sent_again_when_the_facts_arrive(
    tmp_path: Path,
) -> None:
    """Another program marked a session interrupted (its writer's lock was gone) and that
    guess reached the clinic's server; then the session's real end arrives in its
    sidecar. The facts replace the guess in the journal, and the delivery is pending
    again, one revision on, so the server's copy is replaced too; the answer to a try
    of the old revision, arriving late, can no longer mark the new one sent."""
    path = tmp_path / "estim.db"
    clock = WallClock()
    writer, sid = guessable(path, 0xABD, _plan(), UNIT)
    with Journal(path) as other:
        assert other.interrupted == [sid]
        outbox = Outbox(other)
        clock.now += 5  # (the recovery stamped "due" with the real clock)
        assert outbox.claim(sid, clock(), 60.0, by_hand=False)
        assert outbox.sent(sid, clock(), server="https://fhir", location="Procedure/1", status=200)
        assert outbox.claim(sid, clock(), 60.0, by_hand=True)  # a second try, by hand
        before = outbox.get(sid)
    assert before is not None
    assert (before.state, before.revision) == ("sent", 0)
    writer.write_sidecar(sid, [], COMPLETED)
    writer._db.close()
    with Journal(path) as journal:  # imports the sidecar: the facts replace the guess
        assert journal.get(sid).outcome == "completed"
        outbox = Outbox(journal)
        amended = outbox.get(sid)
        assert amended is not None
        assert (amended.state, amended.revision, amended.attempts) == ("pending", 1, 0)
        # the by-hand try of the guess is answered now: it marks nothing sent or refused
        assert not outbox.sent(
            sid, clock(), server="https://fhir", location="Procedure/1", status=200
        )
        assert not outbox.refused(sid, clock(), error="late", status=400, server="https://fhir")
        # nor does a timeout of it put the new revision off to a later try
        assert not outbox.failed(
            sid, clock(), error="timed out", status=None, retry_at_s=clock() + 600, server="x"
        )
        still = outbox.get(sid)
        assert still is not None
        assert (still.state, still.revision) == ("pending", 1)
        assert still.next_attempt_utc == amended.next_attempt_utc
        assert still.last_error == SUPERSEDED
        clock.now += 5  # (the import stamped "due" with the real clock)
        assert outbox.due(clock()) == [sid]  # due now, held by no sender
        assert outbox.claim(sid, clock(), 60.0, by_hand=False)
        assert outbox.sent(
            sid, clock(), server="https://fhir", location="Procedure/1", status=200, revision=1
        )
        done = outbox.get(sid)
    assert done is not None
    assert (done.state, done.revision) == ("sent", 1)


def test_a_version_3_journal_gains_revisions_and_keeps_its_deliveries(
    tmp_path: Path, templates: list[SessionRecord]
) -> None:
    path = tmp_path / "estim.db"
    with Journal(path) as journal:
        sid = copy_session(
            journal, templates[0], 1, serial="S1", created=datetime.now(timezone.utc)
        )
        Outbox(journal).sent(sid, WallClock()(), server="https://fhir", location=None, status=201)
        journal._db.executescript(
            "ALTER TABLE outbox DROP COLUMN revision; PRAGMA user_version = 3;"
        )
    with Journal(path) as journal:
        assert journal._db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        delivery = Outbox(journal).get(sid)
    assert delivery is not None
    assert (delivery.state, delivery.revision) == ("sent", 0)


def test_a_guess_of_interrupted_is_replaced_when_its_writer_finishes_it(tmp_path: Path) -> None:
    """The writer finishes the session in the journal itself after another program had
    guessed it interrupted: the record is the writer's, with no "interrupted" event,
    and its delivery is queued again one revision on."""
    path = tmp_path / "estim.db"
    writer, sid = guessable(path, 0xABE, _plan(), UNIT)
    with Journal(path) as other:
        assert other.interrupted == [sid]
        Outbox(other).sent(sid, WallClock()(), server="https://fhir", location=None, status=201)
    writer.finish(sid, **COMPLETED)
    record = writer.get(sid)
    delivery = Outbox(writer).get(sid)
    writer.close()
    assert record.outcome == "completed"
    assert "interrupted" not in [e.kind for e in record.events]
    assert delivery is not None
    assert (delivery.state, delivery.revision) == ("pending", 1)


def test_events_a_sidecar_adds_to_a_queued_session_queue_it_again(tmp_path: Path) -> None:
    """A guess of "interrupted" whose sidecar brings only events (the writer died
    before it could finish): the guess stands, but the record now holds more (an
    amplitude change, numbered by the writer as the guess's own event, which moves to
    the end), so the delivery goes again; a sidecar that adds nothing queues nothing
    again."""
    path = tmp_path / "estim.db"
    writer, sid = guessable(path, 0xABF, _plan(), UNIT)
    with Journal(path) as other:
        assert other.interrupted == [sid]
        Outbox(other).sent(sid, WallClock()(), server="https://fhir", location=None, status=201)
        (guess,) = [e.n for e in other.get(sid).events if e.kind == "interrupted"]
    late = EventRecord(
        n=guess,  # the writer's own next number: the guess took it
        utc=utc_text(WallClock()()),
        t=3.0,
        kind="amplitude_set",
        data={"channel": 1, "ma": 6.0},
    )
    writer.write_sidecar(sid, [(late, "running")], None)
    with Journal(path) as journal:
        record = journal.get(sid)
        delivery = Outbox(journal).get(sid)
    assert record.outcome == "interrupted"
    assert [(e.n, e.kind) for e in record.events][-2:] == [
        (guess, "amplitude_set"),
        (guess + 1, "interrupted"),
    ]
    assert delivery is not None
    assert (delivery.state, delivery.revision) == ("pending", 1)
    writer.write_sidecar(sid, [(late, "running")], None)  # the same again: nothing new
    writer._db.close()
    with Journal(path) as journal:
        again = Outbox(journal).get(sid)
        assert len(journal.get(sid).events) == len(record.events)
    assert again is not None
    assert again.revision == 1


def test_the_writers_events_after_a_guess_are_kept_and_the_guess_gives_way(
    tmp_path: Path,
) -> None:
    """The writer still at work after another program guessed its session interrupted
    numbers its next event as the guess's: the guess moves to the end each time (the
    writer's event is kept, not ignored as a copy), the delivery is queued again, and
    the writer's finish removes the guess."""
    path = tmp_path / "estim.db"
    clock = WallClock()
    writer, sid = guessable(path, 0xAC0, _plan(), UNIT)
    with Journal(path) as other:
        assert other.interrupted == [sid]
        Outbox(other).sent(sid, clock(), server="https://fhir", location=None, status=201)
    for n, kind, data in (
        (2, "amplitude_set", {"channel": 1, "ma": 6.0}),
        (3, "unit_completed", {}),
    ):
        event = EventRecord(n=n, utc=utc_text(clock()), t=n, kind=kind, data=data)
        writer.write_event(sid, event, "running")
    during = Outbox(writer).get(sid)
    writer.finish(sid, **COMPLETED)
    record = writer.get(sid)
    writer.close()
    assert during is not None
    assert (during.state, during.revision) == ("pending", 2)
    assert [(e.n, e.kind) for e in record.events] == [
        (0, "start_requested"),
        (1, "output_started"),
        (2, "amplitude_set"),
        (3, "unit_completed"),
    ]
    assert record.outcome == "completed"
