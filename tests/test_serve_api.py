"""The clinic service's API on real simulated units and the real web server: rooms and
their live state, start, amplitude, stop, stop all (and how fast it reaches every
unit), clear fault, records and exports, the event stream and its resumption, the
action log, a missing unit and an unplugged one. Real-time tests wait for events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from estim.journal import SCHEMA_VERSION, Journal
from estim.serve.settings import RoomConfig
from estim.sim.registry import powered

from .serve_parts import Clinic, acting, clinic, plan

#: one heartbeat period (SAFETY.md 2): stop all must reach every unit within it
HEARTBEAT_S = 0.1


@pytest.fixture
def three(tmp_path: Path) -> Any:
    with clinic(tmp_path) as c:
        c.connected()
        yield c


def started(c: Clinic, room: str, **changes: Any) -> str:
    answer = c.post(f"/rooms/{room}/sessions", plan(**changes))
    assert answer.status_code == 201, answer.text
    assert answer.json()["room"]["session"]["live"]
    session_id: str = answer.json()["session_id"]
    return session_id


def output_on(c: Clinic, room: str, timeout: float = 10.0) -> None:
    unit = c.units[room]
    end = time.monotonic() + timeout
    with c.events() as stream:
        while not unit.events("output_on"):
            stream.next(max(0.01, end - time.monotonic()))  # every event wakes the check


def test_rooms_show_their_live_state_and_a_start_changes_only_its_room(three: Clinic) -> None:
    before = {r["id"]: r for r in three.get("/rooms").json()}
    assert set(before) == {"room-1", "room-2", "room-3"}
    for room in before.values():
        assert room["link"] == "connected"
        assert room["unit"]["simulated"] is True
        assert room["unit_state"] == "IDLE"
        assert room["session"] is None
        assert room["limits"]["envelope"] == {
            "dwell_min_s": 60.0,
            "dwell_max_s": 600.0,
            "rms_max_ma": 50.0,
        }
    session_id = started(three, "room-2")
    with three.events() as stream:
        rooms = stream.wait_rooms(
            lambda r: (
                (r["room-2"]["session"] or {}).get("state") in ("ramping", "running")
                and r["room-2"]["session"]["channels"][0]["impedance_ohm"] is not None
            )
        )
        first = rooms["room-2"]["session"]["remaining_s"]
        later = stream.wait_rooms(lambda r: r["room-2"]["session"]["remaining_s"] < first)
    session = later["room-2"]["session"]
    assert session["id"] == session_id
    assert session["dwell_s"] == 120.0
    assert session["channels"][0]["planned_ma"] == 5
    assert session["channels"][0]["max_ma"] == 50
    assert later["room-1"]["session"] is None
    assert later["room-3"]["session"] is None
    assert acting(three.units["room-1"]) == {}
    assert acting(three.units["room-3"]) == {}


def test_a_second_start_is_409_and_sends_nothing(three: Clinic) -> None:
    first = started(three, "room-1")
    before = acting(three.units["room-1"])
    answer = three.post("/rooms/room-1/sessions", plan(ch_amplitude_ma=6))
    assert answer.status_code == 409
    assert answer.headers["content-type"] == "application/problem+json"
    assert f"busy with session {first}" in answer.json()["detail"]
    assert acting(three.units["room-1"]) == before


def test_stop_all_reaches_every_unit_within_one_heartbeat_period(three: Clinic) -> None:
    ids = {room: started(three, room) for room in three.units}
    for room in three.units:
        output_on(three, room)
    asked = time.monotonic()  # the units' log uses the same monotonic clock
    answer = three.post("/stop-all")
    answered = time.monotonic() - asked
    assert answer.status_code == 200, answer.text
    results = {r["room"]: r["result"] for r in answer.json()["rooms"]}
    assert results == {room: f"session {ids[room]} stopped" for room in three.units}
    latency = {room: unit.events("output_off")[-1].t - asked for room, unit in three.units.items()}
    print(f"stop all: output off after {latency} s; answered after {answered:.4f} s")
    assert all(0 <= t < HEARTBEAT_S for t in latency.values()), latency
    for room, session_id in ids.items():
        record = three.get(f"/sessions/{session_id}").json()
        assert record["outcome"] == "stopped"
        assert "stop all" in record["stop_reason"]
        assert three.units[room].events("output_off")[-1].data["reason"] == "stop"


def test_stop_with_no_session_still_tells_the_unit_to_stop(three: Clinic) -> None:
    answer = three.post("/rooms/room-3/stop")
    assert answer.status_code == 200
    assert answer.json()["result"].startswith("no session was running; the unit was told to stop")
    assert acting(three.units["room-3"]) == {"STOP": 1}


def test_a_fault_shows_and_is_cleared_from_the_api(tmp_path: Path) -> None:
    with clinic(tmp_path, {"room-1": "lead_off_at=1:1"}) as c:
        c.connected()
        session_id = started(c, "room-1")
        with c.events() as stream:
            rooms = stream.wait_rooms(lambda r: r["room-1"]["unit_state"] == "FAULT")
        assert rooms["room-1"]["faults"] == ["LEAD_OFF"]
        assert rooms["room-1"]["session"]["outcome"] == "faulted"
        record = c.get(f"/sessions/{session_id}").json()
        assert record["outcome"] == "faulted"
        answer = c.post("/rooms/room-1/clear-fault")
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"] == "the unit is IDLE"
        rooms = c.wait_rooms(lambda r: r["room-1"]["unit_state"] == "IDLE")
        assert rooms["room-1"]["faults"] == []


def test_records_and_every_export_format(three: Clinic) -> None:
    session_id = started(three, "room-1", patient_ref="P-0042")
    assert three.post("/rooms/room-1/stop").status_code == 200
    records = three.get("/sessions", params={"patient": "P-0042"}).json()
    assert [r["id"] for r in records] == [session_id]
    assert records[0]["outcome"] == "stopped"
    assert three.get(f"/sessions/{session_id[:4]}").json()["id"] == session_id
    media = {
        "json": "application/json",
        "jsonl": "application/x-ndjson",
        "csv": "text/csv; charset=utf-8",
        "events-csv": "text/csv; charset=utf-8",
        "fhir": "application/fhir+json",
        "html": "text/html; charset=utf-8",
    }
    for fmt, kind in media.items():
        answer = three.get(f"/sessions/{session_id}/export/{fmt}")
        assert answer.status_code == 200, (fmt, answer.text)
        assert answer.headers["content-type"] == kind
        assert session_id in answer.text
    html = three.get(f"/sessions/{session_id}/export/html")
    assert "default-src 'none'" in html.headers["content-security-policy"]
    assert three.get("/sessions/0000000f").status_code == 404
    assert three.get(f"/sessions/{session_id}/export/pdf").status_code == 422
    assert three.get("/sessions", params={"since": "yesterday"}).status_code == 422


def test_the_event_stream_resumes_from_the_journal_without_a_gap(three: Clinic) -> None:
    with three.events() as stream:
        session_id = started(three, "room-2")
        _, first_id, first = stream.wait(lambda name, _i, d: name == "session")
        assert first["session_id"] == session_id
        assert first["room"] == "room-2"
        assert first["kind"] == "start_requested"
    # the client is away while the session runs and ends
    assert three.post("/rooms/room-2/stop").status_code == 200
    record = three.get(f"/sessions/{session_id}").json()
    assert record["events"][-1]["kind"] == "ended"
    with three.events(last_id=int(first_id or 0)) as stream:
        seen = []
        while not seen or seen[-1][1] != "ended":
            name, event_id, data = stream.next()
            if name == "session":
                seen.append((int(event_id or 0), data["kind"], data["n"]))
    assert [n for _, _, n in seen] == list(range(1, len(record["events"])))
    assert [kind for _, kind, _ in seen] == [e["kind"] for e in record["events"][1:]]
    ids = [i for i, _, _ in seen]
    assert ids == sorted(ids)
    assert ids[0] > int(first_id or 0)
    assert three.get("/events", headers={"Last-Event-ID": "x"}).status_code == 400


def test_every_action_is_journaled_with_who_and_from_where(three: Clinic) -> None:
    session_id = started(three, "room-1")
    three.post("/rooms/room-1/amplitude", {"channel": 1, "amplitude_ma": 6})
    three.post("/rooms/room-1/amplitude", {"channel": 1, "amplitude_ma": 600})
    three.post("/stop-all")
    actions = three.get("/actions").json()
    kinds = [(a["action"], a["result"].split(":")[0]) for a in reversed(actions)]
    assert kinds[-4:] == [
        ("start", f"session {session_id}"),
        ("amplitude", "ok"),
        ("amplitude", "refused"),
        ("stop_all", "ok"),
    ]
    assert kinds[0] == ("service_started", "ok")
    for action in actions[:4]:
        assert action["clinician"] == "no login (a service on this machine only)"
        assert action["origin"].startswith("127.0.0.1:")
        assert "python-httpx" in action["origin"]
    assert actions[2]["session_id"] == session_id
    assert actions[2]["detail"] == {"channel": 1, "amplitude_ma": 6.0}


def test_a_missing_unit_shows_as_missing_and_the_other_rooms_go_on(tmp_path: Path) -> None:
    missing = RoomConfig("room-9", "Room 9", str(tmp_path / "no-such-port"))
    with clinic(tmp_path, {"room-1": ""}, extra_rooms=(missing,)) as c:
        rooms = c.wait_rooms(
            lambda r: r["room-1"]["link"] == "connected" and r["room-9"]["link"] == "missing"
        )
        assert "no-such-port" in rooms["room-9"]["link_error"]
        started(c, "room-1")
        answer = c.post("/rooms/room-9/sessions", plan())
        assert answer.status_code == 409
        assert "is not connected" in answer.json()["detail"]
        answer = c.post("/stop-all")
        assert answer.status_code == 200
        results = {r["room"]: r["result"] for r in answer.json()["rooms"]}
        assert results["room-1"].endswith("stopped")
        assert results["room-9"].startswith("not stopped from here: room room-9")


def test_an_unplugged_unit_shows_a_lost_link_and_is_connected_again(tmp_path: Path) -> None:
    with clinic(tmp_path, retry_s=1.0) as three:  # tried again after 1 s, as a person sees it
        three.connected()
        unplug_room_3(three)


def unplug_room_3(three: Clinic) -> None:
    session_id = started(three, "room-3")
    output_on(three, "room-3")
    name = three.service.rooms["room-3"].config.port.removeprefix("sim://")
    with three.events() as stream:
        powered(name).connection.unplug()  # the cable is pulled
        lost = stream.wait_rooms(lambda r: r["room-3"]["link"] == "lost")
        assert "disconnected" in lost["room-3"]["link_error"]
        again = stream.wait_rooms(lambda r: r["room-3"]["link"] == "connected")
    shown = again["room-3"]["session"]  # the last session stays in view, as it ended
    assert (shown["id"], shown["live"], shown["outcome"]) == (session_id, False, "link_lost")
    record = three.get(f"/sessions/{session_id}").json()
    assert record["outcome"] == "link_lost"
    assert three.units["room-3"].events("watchdog")  # the unit turned output off itself
    assert acting(three.units["room-1"]) == {}


def test_the_journal_holds_the_action_log_from_schema_version_3_on(three: Clinic) -> None:
    with Journal.open_existing(three.service.journal.path) as journal:
        (version,) = journal._db.execute("PRAGMA user_version").fetchone()
        tables = {r[0] for r in journal._db.execute("SELECT name FROM sqlite_master")}
    assert version == SCHEMA_VERSION >= 3
    assert "actions" in tables


def test_a_flood_of_refused_requests_never_stops_a_session_and_every_one_is_journaled(
    three: Clinic,
) -> None:
    """Each refused request is an action in the journal: written in batches by the
    action log's own thread, never a transaction per request holding the lock the
    session's journal writer needs (an event not durable within 1 s stops output)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    session_id = started(three, "room-1")
    output_on(three, "room-1")

    def refused(n: int) -> int:
        with httpx.Client(timeout=10) as http:
            codes = [
                http.post(
                    f"{three.base}/api/v1/rooms/room-1/amplitude",
                    json={"channel": 1, "amplitude_ma": 900},
                ).status_code
                for _ in range(n)
            ]
        return codes.count(422)

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(refused, [50] * 8)) == 400
    room = three.room("room-1")
    assert room["session"]["live"], room["session"]
    assert three.post("/rooms/room-1/stop").status_code == 200
    assert three.get(f"/sessions/{session_id}").json()["outcome"] == "stopped"
    actions = three.get("/actions", params={"limit": 500}).json()
    assert (
        sum(a["action"] == "amplitude" and a["result"].startswith("refused") for a in actions)
        == 400
    )
