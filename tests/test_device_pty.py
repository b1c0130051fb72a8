"""The driver over the real pyserial path: ``estim simulate --pty`` in another
process, in real time. Each test waits on the unit's own ``--json`` log, never on
a sleep."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from estim.device import connect
from estim.errors import DeviceError
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.protocol import ErrorCode, State, StopReason

from .procs import SimProcess

CH1 = ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=12)
PLAN = SessionPlan(dwell=60, ramp=2, channels=[CH1])


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    with SimProcess("--pty", "--json") as process:
        yield process


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "estim.db") as j:
        yield j


def test_handshake_session_status_and_stop_over_a_pty(sim: SimProcess, journal: Journal) -> None:
    with connect(sim.port) as device:
        assert device.info.simulated
        assert device.info.channels == 2
        assert device.status().state == State.IDLE
        session = device.start(PLAN, journal=journal)
        sim.wait_for(lambda e: e["kind"] == "state" and e["state"] == "RUNNING")
        assert device.status().session_id == session.session_id
        session.stop(StopReason.OPERATOR)
        off = sim.wait_for(lambda e: e["kind"] == "output_off")
        assert off["reason"] == "stop"
        record = session.wait(timeout=5)
        assert record.outcome == "stopped"
        assert record.delivered_s == off["delivered_ms"] / 1000
        assert off["max_frame_gap_ms"] <= 250  # heartbeats over a real pty, from the loop
        assert journal.get(session.id) == record
    assert sim.stop() == 0


def test_a_refusal_over_a_pty_is_a_device_error(journal: Journal) -> None:
    with SimProcess("--pty", "--json", "impedance_ohm=30000") as sim, connect(sim.port) as device:
        with pytest.raises(DeviceError) as caught:
            device.start(PLAN, journal=journal)
        assert caught.value.code == ErrorCode.LEAD_OFF
        assert "electrode not connected" in str(caught.value)
        (record,) = journal.query()
        assert record.outcome == "refused"


def test_stop_from_another_thread_while_the_session_runs(sim: SimProcess, journal: Journal) -> None:
    with connect(sim.port) as device:
        session = device.start(PLAN, journal=journal)
        sim.wait_for(lambda e: e["kind"] == "output_on")
        stopper = threading.Thread(target=session.stop)
        stopper.start()
        stopper.join(5)
        assert sim.wait_for(lambda e: e["kind"] == "output_off")["reason"] == "stop"
        assert session.wait(timeout=5).outcome == "stopped"


def test_the_simulator_vanishing_is_link_lost_not_a_hang(sim: SimProcess, journal: Journal) -> None:
    with connect(sim.port) as device:
        session = device.start(PLAN, journal=journal)
        sim.wait_for(lambda e: e["kind"] == "output_on")
        sim.proc.send_signal(signal.SIGKILL)
        sim.proc.wait(5)
        started = time.monotonic()
        record = session.wait(timeout=10)
        # the port failed: at once, never a hang (the recovery window is for a silent unit)
        assert time.monotonic() - started < 1.0
        assert record.outcome == "link_lost"
        assert device.lost is not None
