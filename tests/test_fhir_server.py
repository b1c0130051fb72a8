"""estim's records against a real FHIR engine (Medplum's FHIR router, from npm, pinned by
tests/fhir_server/package-lock.json), directly and through a fault proxy.

The figure (issue 19): after every session of a journal has been sent through a proxy
that refuses, resets, answers 500, 429 and 502, times out and loses answers after the
server committed, the server holds exactly one Procedure per session, one Device per
unit and each session's Observations, searchable by the session's identifier: none
lost, none duplicated. ``ESTIM_FHIR_FAULT_SESSIONS`` sets how many sessions: 40 by
default (CI); 200 is the issue's figure (``bench/fhir_outbox.sh``). The engine's
in-memory search reads every stored resource for each conditional create (about
0.6 ms each here), so a run costs the square of its size."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from estim.config import FhirSettings
from estim.export import export
from estim.export.as_fhir import (
    OBSERVATION_SYSTEM,
    SESSION_SYSTEM,
    Systems,
    device_identifier,
    session_identifier,
)
from estim.journal import Journal
from estim.outbox import Outbox
from estim.record import SessionRecord
from estim.sender import Backoff, Sender
from estim.words import parse_utc

from .fhir_parts import (
    KINDS,
    RETRY_AFTER_S,
    TOKEN,
    FaultProxy,
    FhirServer,
    engine_version,
    start_server,
)
from .outbox_helpers import COMPLETED, WallClock, copy_session, guessable, many_sessions
from .records_helpers import varied_journal

FAULT_SESSIONS = int(os.environ.get("ESTIM_FHIR_FAULT_SESSIONS", "40"))
CLINIC = Systems(
    patient="https://clinic.example/fhir/sid/mrn",
    practitioner="https://clinic.example/fhir/sid/staff",
    device="https://clinic.example/fhir/sid/asset",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirServer]:
    with start_server(tmp_path_factory.mktemp("fhir")) as running:
        yield running


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> list[SessionRecord]:
    return varied_journal(tmp_path_factory.mktemp("templates") / "estim.db")


def settings(base_url: str, *, systems: Systems = CLINIC, **changes: Any) -> FhirSettings:
    fields: dict[str, Any] = {
        "base_url": base_url,
        "token": TOKEN,
        "timeout_s": 10.0,
        "patient_system": systems.patient,
        "practitioner_system": systems.practitioner,
        "device_system": systems.device,
    }
    return FhirSettings(**{**fields, **changes})


def held(server: FhirServer, record: SessionRecord) -> dict[str, list[dict[str, Any]]]:
    """What the server holds for one session, found by the session's identifier alone."""
    ident = session_identifier(record)
    found = server.search(
        "Procedure",
        identifier=f"{ident['system']}|{ident['value']}",
        _revinclude="Observation:part-of",
    )
    out: dict[str, list[dict[str, Any]]] = {"Procedure": [], "Observation": []}
    for resource in found:
        out[resource["resourceType"]].append(resource)
    return out


def test_a_session_sent_twice_is_filed_once(
    server: FhirServer, templates: list[SessionRecord], tmp_path: Path
) -> None:
    with Journal(tmp_path / "estim.db") as journal:
        sid = copy_session(
            journal, templates[0], 0x0A, serial="TWICE-1", created=datetime.now(timezone.utc)
        )
        record = journal.get(sid)
        sender = Sender(journal, settings(server.base_url))
        (first,) = sender.send([sid])
        (second,) = sender.send([sid])  # by hand, again: the server finds it
        delivery = Outbox(journal).get(sid)
    assert (first.verdict, second.verdict) == ("sent", "sent")
    assert first.location == second.location
    assert first.location is not None
    assert first.location.startswith("Procedure/")
    assert delivery is not None
    assert (delivery.state, delivery.attempts, delivery.location) == ("sent", 2, first.location)
    files = held(server, record)
    assert len(files["Procedure"]) == 1
    assert len(files["Observation"]) == 1 + len(record.plan.channels)
    device = device_identifier(record, CLINIC)
    assert len(server.search("Device", identifier=f"{device['system']}|{device['value']}")) == 1
    (procedure,) = files["Procedure"]
    # what a server matches on survived the transaction unrewritten
    assert procedure["identifier"] == [session_identifier(record)]
    assert procedure["subject"]["identifier"] == {"system": CLINIC.patient, "value": "P-0042"}
    assert procedure["performer"][0]["actor"]["identifier"]["system"] == CLINIC.practitioner
    assert procedure["usedReference"][0]["reference"].startswith("Device/")
    for observation in files["Observation"]:
        assert observation["identifier"][0]["system"] == OBSERVATION_SYSTEM
        assert observation["partOf"] == [{"reference": first.location}]


def test_an_export_file_posted_twice_creates_nothing_new(
    server: FhirServer, templates: list[SessionRecord]
) -> None:
    """What ``estim export --format fhir`` writes for one session, uploaded by hand twice.
    (Medplum refuses a transaction of conditional creates of more than 8 entries: a file
    of several sessions is for servers without that limit; ``estim push`` splits.)"""
    for record in templates:
        bundle = json.loads(export("fhir", [record]))
        status, answer = server.post("", bundle)
        assert status == 200
        status, again = server.post("", bundle)
        assert {e["response"]["status"].split()[0] for e in again["entry"]} == {"200"}
        assert [e["response"]["location"] for e in again["entry"]] == [
            e["response"]["location"] for e in answer["entry"]
        ]
        files = held(server, record)
        assert len(files["Procedure"]) == 1
        assert len(files["Observation"]) == 1 + len(record.plan.channels)


def test_an_eight_channel_session_goes_as_two_transactions_and_is_filed_once(
    server: FhirServer, tmp_path: Path
) -> None:
    """11 entries: more than the engine takes in one transaction of conditional creates.
    The second transaction points at the Procedure and Device the first one filed."""
    from estim.export.as_fhir import MOST_ENTRIES, session_transactions

    from .records_helpers import eight_channels

    record = eight_channels(tmp_path / "eight.db")
    assert [len(t["entry"]) for t in session_transactions(record)] == [MOST_ENTRIES, 3]
    with Journal(tmp_path / "eight.db") as journal:
        for _ in range(2):
            (attempt,) = Sender(journal, settings(server.base_url)).send([record.id])
            assert attempt.verdict == "sent"
    files = held(server, record)
    assert len(files["Procedure"]) == 1
    assert len(files["Observation"]) == 9
    (procedure,) = files["Procedure"]
    device = procedure["usedReference"][0]["reference"]
    for observation in files["Observation"]:
        assert observation["partOf"] == [{"reference": f"Procedure/{procedure['id']}"}]
        assert observation["device"] == {"reference": device}


def test_a_unit_whose_serial_a_search_would_misread_is_still_one_device(
    server: FhirServer, templates: list[SessionRecord], tmp_path: Path
) -> None:
    with Journal(tmp_path / "estim.db") as journal:
        ids = [
            copy_session(
                journal,
                templates[0],
                0x100 + i,
                serial="A,1|B$2\\3%4 5",
                created=datetime(2026, 11, 22, 9, i, tzinfo=timezone.utc),
            )
            for i in range(2)
        ]
        sender = Sender(journal, settings(server.base_url))
        assert [a.verdict for a in sender.send(ids)] == ["sent", "sent"]
        record = journal.get(ids[0])
    device = device_identifier(record, CLINIC)
    assert device["value"] == "estim-sim/A%2C1%7CB%242%5C3%254 5"
    found = server.search("Device", identifier=f"{device['system']}|{device['value']}")
    assert [d["serialNumber"] for d in found] == ["A,1|B$2\\3%4 5"]


def test_a_refusal_is_kept_with_its_reason_and_sent_again_by_hand(
    server: FhirServer, templates: list[SessionRecord], tmp_path: Path
) -> None:
    """Two Devices with the unit's identifier already on the server (someone else made
    them): the conditional create cannot choose, and the engine refuses the whole
    transaction with 412 and an OperationOutcome. Kept, shown, never retried on its
    own; once a person has removed the duplicate, sent by hand."""
    with Journal(tmp_path / "estim.db") as journal:
        sid = copy_session(
            journal, templates[1], 0x200, serial="DUP-1", created=datetime.now(timezone.utc)
        )
        record = journal.get(sid)
        device = device_identifier(record, CLINIC)
        made = [
            server.post("Device", {"resourceType": "Device", "identifier": [device]})[1]["id"]
            for _ in range(2)
        ]
        clock = WallClock()
        sender = Sender(journal, settings(server.base_url), clock=clock)
        (attempt,) = sender.send_due()
        assert attempt.verdict == "refused"
        assert attempt.status == 412
        assert "multiple-matches: Multiple resources found matching condition" in attempt.detail
        delivery = Outbox(journal).get(sid)
        assert delivery is not None
        assert delivery.state == "refused"
        assert "REFUSED by the server (412)" in delivery.words()
        clock.advance(7 * 86400)
        assert sender.send_due() == []  # a week later: still kept, not retried on its own
        assert held(server, record)["Procedure"] == []
        assert server.delete(f"Device/{made[1]}") in (200, 204)
        (again,) = sender.send([sid])
        assert again.verdict == "sent"
    assert len(held(server, record)["Procedure"]) == 1


def test_a_wrong_token_is_retried_not_refused(
    server: FhirServer, templates: list[SessionRecord], tmp_path: Path
) -> None:
    with Journal(tmp_path / "estim.db") as journal:
        copy_session(
            journal, templates[0], 0x300, serial="TOKEN-1", created=datetime.now(timezone.utc)
        )
        clock = WallClock()
        (attempt,) = Sender(
            journal, settings(server.base_url, token="stale"), clock=clock
        ).send_due()
        assert (attempt.verdict, attempt.status) == ("retry", 401)
        assert "check the [fhir] token" in attempt.detail
        clock.advance(3600)
        (fixed,) = Sender(journal, settings(server.base_url), clock=clock).send_due()
        assert fixed.verdict == "sent"


# --- the fault run ---------------------------------------------------------------------------

#: the chance of each fault on one connection (the rest: forwarded and answered)
FAULTS = {
    "reset": 0.06,
    "http_500": 0.06,
    "http_429": 0.05,
    "timeout": 0.02,
    "reset_mid_response": 0.07,
    "lost_after_commit": 0.10,
    "timeout_after_commit": 0.02,
    "http_502_after_commit": 0.06,
}
#: the chance that the server is unreachable (connections refused) for a whole pass
OUTAGE = 0.08
#: the client's timeout: well above the engine's own time for one transaction (about
#: 0.15 s with 40 sessions stored, 0.6 s with 200), so only the proxy's holds time out
CLIENT_TIMEOUT_S = 1.0 if FAULT_SESSIONS <= 60 else 3.0


def test_every_session_through_a_faulty_network_is_filed_exactly_once(
    tmp_path_factory: pytest.TempPathFactory, templates: list[SessionRecord]
) -> None:
    rng, faults_rng = random.Random(19), random.Random(1919)  # (the proxy's: its own thread)
    kinds = list(FAULTS)

    def choose(n: int) -> str:
        roll, edge = faults_rng.random(), 0.0
        for kind in kinds:
            edge += FAULTS[kind]
            if roll < edge:
                return kind
        return "ok"

    units = ("FAULT-1", "FAULT-2", "FAULT-3")
    with (
        start_server(tmp_path_factory.mktemp("fault-fhir")) as server,  # its own: exact totals
        Journal(tmp_path_factory.mktemp("fault") / "estim.db") as journal,
    ):
        ids = many_sessions(journal, templates, FAULT_SESSIONS, serials=units)
        records = [journal.get(sid) for sid in ids]
        port = int(server.base_url.split(":")[2].split("/")[0])
        proxy = FaultProxy(("127.0.0.1", port), choose)
        clock = WallClock()
        sender = Sender(
            journal,
            settings(proxy.base_url, timeout_s=CLIENT_TIMEOUT_S),
            clock=clock,
            backoff=Backoff(first_s=5, most_s=600),
            rng=random.Random(7),
        )
        verdicts: Counter[str] = Counter()
        refused_connections = passes = 0
        started = time.monotonic()
        try:
            while True:
                outage = rng.random() < OUTAGE
                if outage:
                    proxy.down()
                try:
                    attempts = sender.send_due()
                finally:
                    proxy.up()
                for attempt in attempts:
                    verdicts[attempt.verdict] += 1
                    refused_connections += outage
                    if outage:
                        assert "connection refused" in attempt.detail, attempt
                    if attempt.status == 429:  # the server's Retry-After is honoured
                        assert attempt.next_attempt_utc is not None
                        wait = parse_utc(attempt.next_attempt_utc).timestamp() - clock()
                        assert wait >= RETRY_AFTER_S - 0.001
                due = sender.seconds_until_due()
                if due is None:
                    break
                clock.advance(due)
                passes += 1
                assert passes < 20 * FAULT_SESSIONS, "the outbox does not drain"
        finally:
            proxy.close()
        seconds = time.monotonic() - started
        outbox = Outbox(journal)
        assert outbox.counts() == {"pending": 0, "sent": FAULT_SESSIONS, "refused": 0}
        tries = sum(d.attempts for d in outbox.deliveries(ids).values())

        # what the server holds, asked directly (not through the proxy)
        lost = duplicated = 0
        for record in records:
            files = held(server, record)
            lost += len(files["Procedure"]) == 0
            duplicated += max(0, len(files["Procedure"]) - 1)
            assert len(files["Procedure"]) == 1, record.id
            assert len(files["Observation"]) == 1 + len(record.plan.channels), record.id
        observations = sum(1 + len(r.plan.channels) for r in records)
        assert server.count("Procedure") == FAULT_SESSIONS
        assert server.count("Observation") == observations
        assert server.count("Device") == len(units)
        for unit in units:
            assert len(server.search("Device", identifier=f"{CLINIC.device}|estim-sim/{unit}")) == 1
        # the search matches exactly: by system alone every session, a value of none
        assert server.count("Procedure", identifier=f"{SESSION_SYSTEM}|") == FAULT_SESSIONS
        assert server.count("Procedure", identifier=f"{SESSION_SYSTEM}|00000000-x") == 0

    injected = {kind: proxy.injected[kind] for kind in KINDS if kind != "ok"}
    assert all(injected.values()), injected  # every kind of fault happened
    assert refused_connections > 0
    assert tries == sum(verdicts.values()) == proxy.injected.total() + refused_connections
    figure = {
        "engine": engine_version(),
        "sessions": FAULT_SESSIONS,
        "units": len(units),
        "attempts": tries,
        "delivered": verdicts["sent"],
        "faults": {"refused (server down)": refused_connections, **injected},
        "answered by the server": proxy.committed,
        "lost": lost,
        "duplicated": duplicated,
        "passes": passes,
        "seconds": round(seconds, 1),
    }
    print("\nFHIR outbox fault run: " + json.dumps(figure))
    assert (lost, duplicated) == (0, 0)


# --- estim push, as a clinician's script would run it -----------------------------------------


def test_estim_push_delivers_and_history_shows_it(
    server: FhirServer, templates: list[SessionRecord], tmp_path: Path
) -> None:
    db = tmp_path / "estim.db"
    with Journal(db) as journal:
        ids = [
            copy_session(
                journal,
                templates[i],
                (0xA1, 0xB2, 0xC3)[i] << 24,
                serial="PUSH-1",
                created=datetime(2026, 11, 22, 10, i, tzinfo=timezone.utc),
            )
            for i in range(3)
        ]
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[fhir]\nbase_url = "{server.base_url}"\ntoken_env = "CLINIC_FHIR_TOKEN"\n'
        f'patient_system = "{CLINIC.patient}"\n'
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESTIM_")},
        "ESTIM_HOME": str(home),
        "ESTIM_DB": str(db),
        "CLINIC_FHIR_TOKEN": TOKEN,
    }

    def estim(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "estim", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    before = estim("history")
    assert before.returncode == 0, before.stderr
    assert before.stdout.count(" queued ") == 3
    one = estim("push", ids[0][:2])  # a unique prefix, as everywhere
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith(f"{ids[0]}  sent      Procedure/")
    rest = estim("push", "--pending", "--json")
    assert rest.returncode == 0, rest.stderr
    assert [json.loads(line)["session_id"] for line in rest.stdout.splitlines()] == ids[1:]
    after = estim("history", "--json")
    assert {s["id"]: s["fhir"]["state"] for s in json.loads(after.stdout)} == dict.fromkeys(
        ids, "sent"
    )
    shown = estim("show", ids[0])
    assert "FHIR      sent " in shown.stdout
    nothing = estim("push", "--pending")
    assert (nothing.returncode, nothing.stdout.strip()) == (0, "Nothing to send.")
    again = estim("push", "--since", "2026-11-22")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(" sent ") == 3  # sent again: found, not copied
    for record_id in ids:
        with Journal(db) as journal:
            assert len(held(server, journal.get(record_id))["Procedure"]) == 1
    wrong = estim("push", "--pending", "--since", "1d")
    assert (wrong.returncode, wrong.stderr.strip()) == (
        2,
        "estim: give one of --pending, --since, not several",
    )


def _until(condition: Any, within_s: float = 30.0) -> None:
    """Wait for another thread or process to get somewhere (bounded: fails, never hangs)."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.05)


def test_the_background_sender_delivers_on_its_own_thread(
    server: FhirServer, templates: list[SessionRecord], tmp_path: Path
) -> None:
    from estim.sender import BackgroundSender

    db = tmp_path / "estim.db"
    with Journal(db) as journal:
        sid = copy_session(
            journal, templates[0], 0x500, serial="BG-1", created=datetime.now(timezone.utc)
        )
        background = BackgroundSender(db, settings(server.base_url), idle_s=0.2).start()
        try:
            _until(lambda: (Outbox(journal).get(sid) or _NONE).state == "sent")
            later = copy_session(
                journal, templates[1], 0x501, serial="BG-1", created=datetime.now(timezone.utc)
            )
            background.wake()  # a session just ended
            _until(lambda: (Outbox(journal).get(later) or _NONE).state == "sent")
        finally:
            background.stop(timeout=30)
        assert background.errors == []
        assert len(held(server, journal.get(later))["Procedure"]) == 1


class _NONE:
    state = "absent"


def test_estim_push_watch_keeps_delivering_until_ctrl_c(
    server: FhirServer, templates: list[SessionRecord], tmp_path: Path
) -> None:
    import signal

    db = tmp_path / "estim.db"
    with Journal(db) as journal:
        sid = copy_session(
            journal, templates[0], 0x600, serial="WATCH-1", created=datetime.now(timezone.utc)
        )
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'[fhir]\nbase_url = "{server.base_url}"\n')
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESTIM_")},
        "ESTIM_HOME": str(home),
        "ESTIM_DB": str(db),
        "ESTIM_FHIR_TOKEN": TOKEN,
    }
    watching = subprocess.Popen(
        [sys.executable, "-m", "estim", "push", "--watch"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Journal(db) as journal:
            _until(lambda: (Outbox(journal).get(sid) or _NONE).state == "sent")
        watching.send_signal(signal.SIGINT)
        out, err = watching.communicate(timeout=30)
    finally:
        if watching.poll() is None:
            watching.kill()
            watching.communicate()
    assert watching.returncode == 0, err
    assert out.startswith(f"{sid}  sent      Procedure/")


def test_a_guess_of_interrupted_on_the_server_is_replaced_by_the_facts(
    server: FhirServer, tmp_path: Path
) -> None:
    """A session another program guessed interrupted (its writer's lock was gone) is
    filed on the server as such; its real end then arrives in its sidecar. The next
    delivery replaces the server's Procedure and Observations in place: one of each,
    at the same address, saying what the journal says."""
    path = tmp_path / "estim.db"
    unit = {
        "model": "estim-sim",
        "serial_number": "AMEND-1",
        "firmware": "sim-1",
        "simulated": True,
    }
    plan = {
        "dwell": 60,
        "ramp": 5,
        "patient_ref": "P-0042",
        "channels": [
            {"channel": 1, "frequency_hz": 2, "pulse_width_us": 250, "amplitude_ma": 5},
            {"channel": 2, "frequency_hz": 100, "pulse_width_us": 150, "amplitude_ma": 8},
        ],
    }
    writer, sid = guessable(path, 0xA3E, plan, unit, mask=3)
    with Journal(path) as guessing:
        assert guessing.interrupted == [sid]
        guess = guessing.get(sid)
        (first,) = Sender(guessing, settings(server.base_url)).send([sid])
    assert first.verdict == "sent"
    assert first.location is not None
    (filed,) = held(server, guess)["Procedure"]
    assert filed["status"] != "completed"
    writer.write_sidecar(sid, [], COMPLETED)
    writer._db.close()
    with Journal(path) as journal:  # the sidecar is imported: the facts replace the guess
        facts = journal.get(sid)
        assert facts.outcome == "completed"
        due = Sender(journal, settings(server.base_url)).send_due()
        delivery = Outbox(journal).get(sid)
    assert [a.verdict for a in due] == ["sent"]
    assert delivery is not None
    assert (delivery.state, delivery.revision) == ("sent", 1)
    files = held(server, facts)
    (procedure,) = files["Procedure"]
    assert procedure["status"] == "completed"
    assert procedure["id"] == filed["id"]  # replaced in place, not filed beside the guess
    assert procedure["identifier"] == [session_identifier(facts)]
    assert len(files["Observation"]) == 1 + len(facts.plan.channels)
    dose = [o for o in files["Observation"] if o["identifier"][0]["value"].endswith("/dose")]
    assert dose[0]["valueQuantity"]["value"] == 60
    for observation in files["Observation"]:
        assert observation["partOf"] == [{"reference": f"Procedure/{filed['id']}"}]
