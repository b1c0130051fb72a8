"""The asyncio runner over real transports, in real time: ``estim simulate --pty``
and ``--tcp`` in another process (the session rules themselves run against both
runners in test_session.py). Waits are on the unit's events, never on sleeps."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import estim
from estim import aio
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.sim import SimulatedUnit, serve

from .procs import SimProcess

PLAN = SessionPlan(
    dwell=60,
    ramp=2,
    channels=[ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)],
)


@pytest.mark.parametrize("transport", ["--pty", "--tcp=127.0.0.1:0"])
def test_a_session_over_a_real_port(transport: str, tmp_path: Path) -> None:
    async def main(port: str, journal: Journal) -> tuple[list[str], estim.SessionRecord]:
        async with aio.connect(port) as unit:
            assert unit.info.simulated
            session = await unit.start(PLAN, journal=journal)
            kinds = []
            async for event in session.events():
                kinds.append(event.kind)
                if event.kind == "ramp_done":
                    status = await unit.status()
                    assert status.session_id == session.session_id
                    await session.set_amplitude(1, 5.5)
                if event.kind == "amplitude_reached":
                    await session.stop()
            return kinds, await session.wait()

    with SimProcess(*transport.split("="), "--json") as sim, Journal(tmp_path / "j.db") as journal:
        kinds, record = asyncio.run(main(sim.port, journal))
        off = sim.wait_for(lambda e: e["kind"] == "output_off")
        assert journal.get(record.id) == record
    assert kinds[:4] == ["start_requested", "start_accepted", "output_started", "ramp_done"]
    assert record.outcome == "stopped"
    assert record.delivered_s == off["delivered_ms"] / 1000
    assert off["reason"] == "stop"
    assert off["max_frame_gap_ms"] <= 250  # heartbeats from the event loop, over a real port


def test_cancelling_the_waiting_task_stops_output(tmp_path: Path) -> None:
    async def main(port: str, journal: Journal) -> estim.SessionRecord:
        async with aio.connect(port) as unit:
            session = await unit.start(PLAN, journal=journal)
            async for event in session.events():
                if event.kind == "output_started":
                    break
            waiting = asyncio.create_task(session.wait())
            await asyncio.sleep(0)  # let it start waiting
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            return await session.wait()

    with SimProcess("--pty", "--json") as sim, Journal(tmp_path / "j.db") as journal:
        record = asyncio.run(main(sim.port, journal))
        off = sim.wait_for(lambda e: e["kind"] == "output_off")
    assert off["reason"] == "stop"
    assert record.outcome == "stopped"
    assert "cancelled" in (record.stop_reason or "")


def test_a_manual_clock_unit_needs_a_loop_on_its_clock() -> None:
    clock = estim.ManualClock()
    with serve(SimulatedUnit(clock=clock)) as url:

        async def main() -> None:
            async with aio.connect(url):
                pass

        with pytest.raises(estim.LinkError, match=r"estim\.aio\.run"):
            asyncio.run(main())
        aio.run(main(), clock=clock)  # on its clock it connects


def test_run_on_a_manual_clock_moves_virtual_time_only() -> None:
    clock = estim.ManualClock()

    async def main() -> float:
        before = asyncio.get_running_loop().time()
        await asyncio.sleep(600)
        return asyncio.get_running_loop().time() - before

    assert aio.run(main(), clock=clock) == pytest.approx(600)
    assert clock.now() == pytest.approx(600)
