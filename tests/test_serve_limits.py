"""The clinic service adds no path around the limits (SAFETY.md 10): every over-limit
start and every over-limit amplitude change gets a 4xx with the library's words, and
the simulated unit sees nothing that acts on its output (``requests_seen``); a refused
plan starts nothing and leaves no session in the journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from estim.limits import ClinicLimits
from estim.protocol import MessageType

from .serve_parts import Clinic, acting, clinic, plan

#: clinic 30 mA; room-2 narrows it to 20 mA; room-3's unit only goes to 25 mA
CLINIC = ClinicLimits(amplitude_max_ma=30, dwell_max=480)
ROOMS = {"room-1": "", "room-2": "", "room-3": "amplitude_max_ma=25"}
ROOM_LIMITS = {"room-2": ClinicLimits(amplitude_max_ma=20)}


@pytest.fixture
def limited(tmp_path: Path) -> Any:
    with clinic(tmp_path, ROOMS, clinic_limits=CLINIC, room_limits=ROOM_LIMITS) as c:
        c.connected()
        yield c


@pytest.fixture
def strong(tmp_path: Path) -> Any:
    """A unit that goes to 200 mA (and slews fast): only SAFETY.md's envelope is left."""
    with clinic(tmp_path, {"room-1": "amplitude_max_ma=200&slew_ma_per_s=100"}) as c:
        c.connected()
        yield c


def refused(c: Clinic, room: str, path: str, body: dict[str, Any], words: str) -> dict[str, Any]:
    unit = c.units[room]
    before = acting(unit)
    answer = c.post(path, body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = answer.json()
    assert words in problem["detail"], problem
    assert "\n" not in problem["detail"]
    assert acting(unit) == before, "something reached the unit"
    return problem


START_CASES = [
    (
        "room-1",
        plan(ch_amplitude_ma=35),
        "channel 1: amplitude 35 mA is above the clinic's maximum 30 mA",
    ),
    (
        "room-2",
        plan(ch_amplitude_ma=25),
        "channel 1: amplitude 25 mA is above room room-2's maximum 20 mA",
    ),
    (
        "room-3",
        plan(ch_amplitude_ma=28),
        "channel 1: amplitude 28 mA is above the unit's maximum 25 mA",
    ),
    ("room-1", plan(dwell="59s"), "dwell '59s' is outside 60-600 s"),
    ("room-1", plan(dwell=601), "dwell 601 s is outside 60-600 s"),
    ("room-1", plan(dwell="9m"), "dwell 9 min is above the clinic's maximum 8 min"),
]


@pytest.mark.parametrize(("room", "body", "words"), START_CASES)
def test_an_over_limit_start_is_refused_and_starts_nothing(
    limited: Clinic, room: str, body: dict[str, Any], words: str
) -> None:
    problem = refused(limited, room, f"/rooms/{room}/sessions", body, words)
    assert problem.get("room") in (None, room)
    assert limited.get("/sessions").json() == []  # nothing was even recorded as requested
    assert limited.room(room)["session"] is None
    actions = limited.get("/actions").json()
    assert actions[0]["action"] == "start"
    assert actions[0]["result"].startswith("refused: ")


def test_more_than_50_ma_rms_is_refused_as_a_plan_and_as_a_live_change(strong: Clinic) -> None:
    rms = "r.m.s."
    refused(
        strong,
        "room-1",
        "/rooms/room-1/sessions",
        plan(ramp="10s", ch_frequency_hz=100, ch_pulse_width_us=500, ch_amplitude_ma=160),
        rms,
    )
    started = strong.post(
        "/rooms/room-1/sessions",
        plan(ramp="10s", ch_frequency_hz=100, ch_pulse_width_us=500, ch_amplitude_ma=100),
    )
    assert started.status_code == 201, started.text
    problem = refused(
        strong, "room-1", "/rooms/room-1/amplitude", {"channel": 1, "amplitude_ma": 160}, rms
    )
    assert "50 mA" in problem["detail"]
    strong.post("/rooms/room-1/stop")


LIVE_CASES = [
    ("room-1", 35, "above the clinic's maximum 30 mA"),
    ("room-2", 25, "above room room-2's maximum 20 mA"),
    ("room-3", 28, "above the unit's maximum 25 mA"),
    ("room-1", 10.05, "not a multiple of the unit's step"),
    ("room-1", -1, "must be 0 or more"),
]


def test_every_over_limit_amplitude_change_is_refused_and_sends_nothing(limited: Clinic) -> None:
    for room in ROOMS:
        answer = limited.post(f"/rooms/{room}/sessions", plan(ch_amplitude_ma=10))
        assert answer.status_code == 201, answer.text
    for room, ma, words in LIVE_CASES:
        refused(
            limited, room, f"/rooms/{room}/amplitude", {"channel": 1, "amplitude_ma": ma}, words
        )
    # the same path takes a change within the limits, and the unit gets it
    unit = limited.units["room-2"]
    before = unit.requests_seen[MessageType.SET_AMPLITUDE]
    answer = limited.post("/rooms/room-2/amplitude", {"channel": 1, "amplitude_ma": 20})
    assert answer.status_code == 200, answer.text
    assert unit.requests_seen[MessageType.SET_AMPLITUDE] == before + 1
    assert limited.post("/stop-all").status_code == 200


def test_a_channel_the_unit_lacks_and_wrong_types_are_refused(limited: Clinic) -> None:
    assert limited.post("/rooms/room-1/sessions", plan()).status_code == 201
    unit = limited.units["room-1"]
    before = acting(unit)
    for body in (
        {"channel": 3, "amplitude_ma": 5},  # the simulated unit has 2 channels
        {"channel": 1, "amplitude_ma": "12"},
        {"channel": 1.5, "amplitude_ma": 5},
        {"channel": 1, "amplitude_ma": None},
        {"channel": 1},
        {"channel": 1, "amplitude_ma": 5, "also": 1},
        [],
    ):
        answer = limited.post("/rooms/room-1/amplitude", body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    assert acting(unit) == before
    limited.post("/stop-all")
