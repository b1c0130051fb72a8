"""The asyncio runner over real transports, in real time: ``estim simulate --pty``
and ``--tcp`` in another process (the session rules themselves run against both
runners in test_session.py). Waits are on the unit's events, never on sleeps."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import estim
from estim import aio
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.sim import SimulatedUnit, UnitConfig, serve

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


class _SlowDisk(Journal):
    """A journal whose first commit of a session takes ``seconds`` of (virtual) time,
    like an fsync on a slow disk."""

    def __init__(self, path: Path, clock: estim.ManualClock, seconds: float) -> None:
        super().__init__(path)
        self.clock = clock
        self.seconds = seconds

    def begin(self, *args: Any, **kwargs: Any) -> str:
        self.clock.sleep(self.seconds)
        return super().begin(*args, **kwargs)


def test_a_slow_journal_at_start_holds_up_no_other_unit_on_the_loop(tmp_path: Path) -> None:
    clock = estim.ManualClock()
    units = [SimulatedUnit(UnitConfig(serial_number=f"SIM-{i}"), clock=clock) for i in range(2)]

    async def main(url0: str, url1: str) -> list[estim.SessionRecord]:
        async with aio.connect(url0) as unit0, aio.connect(url1) as unit1:
            with (
                Journal(tmp_path / "fast.db") as fast,
                _SlowDisk(tmp_path / "slow.db", clock, 2.0) as slow,
            ):
                first = await unit0.start(PLAN, journal=fast)
                await asyncio.sleep(1)
                second = await unit1.start(PLAN, journal=slow)
                await first.stop()
                await second.stop()
                return [await first.wait(), await second.wait()]

    with serve(units[0]) as url0, serve(units[1]) as url1:
        records = aio.run(main(url0, url1), clock=clock)
    assert [r.outcome for r in records] == ["stopped", "stopped"]
    assert units[0].faults == set()  # its heartbeats went on while the other's journal wrote
    assert records[0].delivered_s > 2.5


@pytest.mark.parametrize(
    ("journal_s", "cancel_at"),
    [(1.0, 0.5), (0.0, 0.1)],
    ids=["while-the-journal-writes", "while-the-unit-answers"],
)
def test_cancelling_a_start_leaves_output_off_and_the_record_finished(
    tmp_path: Path, journal_s: float, cancel_at: float
) -> None:
    clock = estim.ManualClock()
    unit = SimulatedUnit(clock=clock)

    async def main(url: str, journal: Journal) -> None:
        async with aio.connect(url) as device:
            starting = asyncio.create_task(device.start(PLAN, journal=journal))
            await asyncio.sleep(cancel_at)
            starting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await starting
            await asyncio.sleep(3)
            assert device._sessions == {}

    with serve(unit) as url, _SlowDisk(tmp_path / "j.db", clock, journal_s) as journal:
        aio.run(main(f"{url}?delay=1&delay_ms=40", journal), clock=clock)  # START at 0.08 s
        (record,) = journal.query()
    assert not unit.output_on
    assert record.outcome in ("not_done", "stopped")
    assert "cancelled" in (record.stop_reason or "")


def test_a_port_lost_while_the_start_is_committed_ends_that_session(tmp_path: Path) -> None:
    """The first record is committed off the loop; if the port fails meanwhile, start()
    raises LinkLost and the record is finished (it waited forever before)."""
    clock = estim.ManualClock()
    unit = SimulatedUnit(clock=clock)

    async def main(url: str, journal: Journal) -> BaseException | None:
        async with aio.connect(url) as device:
            starting = asyncio.create_task(device.start(PLAN, journal=journal))
            await asyncio.sleep(0.5)
            device.port.sim_connection.unplug()
            try:
                await asyncio.wait_for(starting, 30)
            except estim.LinkLost as err:
                return err
            return None

    with serve(unit) as url, _SlowDisk(tmp_path / "j.db", clock, 1.0) as journal:
        error = aio.run(main(url, journal), clock=clock)
        (record,) = journal.query()
    assert isinstance(error, estim.LinkLost)
    assert record.outcome == "link_lost"
    assert not unit.output_on
