"""A room's own rules, on a real simulated unit: what a start, a stop and a second
start asked for at once leave running."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estim.device import connect
from estim.errors import UnitBusy
from estim.journal import Journal
from estim.limits import ClinicLimits
from estim.plan import SessionPlan
from estim.serve.rooms import STARTING, Room
from estim.serve.settings import RoomConfig
from estim.sim import SimulatedUnit, serve

from .serve_parts import PLAN


class GatedStarts:
    """``estim.device.connect``, whose devices' first ``start`` waits at a gate the
    test opens: that start is "under way" for exactly as long as the test says."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        device = connect(*args, **kwargs)
        start = device.start

        def gated(*a: Any, **kw: Any) -> Any:
            if not self.entered.is_set():
                self.entered.set()
                assert self.gate.wait(10.0)
            return start(*a, **kw)

        device.start = gated
        return device


@pytest.fixture
def room(tmp_path: Path) -> Iterator[tuple[Room, SimulatedUnit, GatedStarts]]:
    unit = SimulatedUnit()
    gates = GatedStarts()
    with serve(unit) as url, Journal(tmp_path / "estim.db") as journal:
        config = RoomConfig("room-1", "Room 1", url, ClinicLimits())
        room = Room(config, journal=journal, notify=lambda *_: None, connect=gates)
        connected = threading.Event()
        room._notify = lambda *_: connected.set()
        room.open()
        assert connected.wait(10.0)
        try:
            yield room, unit, gates
        finally:
            room.close()


def test_a_second_start_never_clears_a_stop_promised_to_the_first(
    room: tuple[Room, SimulatedUnit, GatedStarts],
) -> None:
    """A stop asked for while a start is under way is answered "stopped the moment the
    unit accepts it"; a second start in that room meanwhile (a double click, a client's
    retry) cleared the held stop, and the first session ran on."""
    room_, unit, gates = room
    plan = SessionPlan.model_validate(PLAN)
    started: list[Any] = []
    first = threading.Thread(target=lambda: started.append(room_.start(plan)))
    first.start()
    assert gates.entered.wait(10.0)
    assert room_.request_stop("stop all") is STARTING
    with pytest.raises(UnitBusy, match="a session is starting"):
        room_.start(plan)
    gates.gate.set()
    first.join(10.0)
    [session] = started
    session.wait(timeout=10.0)
    record = session.record()
    assert record.outcome == "stopped"
    assert record.stop_reason is not None
    assert "stop all" in record.stop_reason
    assert not unit.output_on
