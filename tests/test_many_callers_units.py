"""Issue 18's attacks where a unit is involved, against both units in another
process over a real pty, in real time: ``estim simulate --pty`` and the C
reference unit; both runners. Waits are for the unit's own ``--json`` log lines.

- Two starts at once: one session, the other refused ``UnitBusy``; the unit runs
  the started session's own plan (its STATUS setpoint and its log).
- The caller's plan forced to other channels after start: an amplitude past
  50 mA r.m.s. at what the unit runs is refused.
- A unit that reports a fault: the session ends faulted, output off.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estim import aio
from estim.device import connect
from estim.errors import OutputLimitError, UnitBusy
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan

from .procs import SimProcess
from .runners import RUNNERS

GENTLE = ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)
STRONG = ChannelPlan(channel=1, frequency_hz=100, pulse_width_us=500, amplitude_ma=20)
#: past 50 mA r.m.s. at 100 Hz / 500 us (63.2 mA), 6.3 mA at 2 Hz / 250 us
ATTACK_MA = 200
OPTIONS = ["amplitude_max_ma=200", "slew_ma_per_s=100"]


def plan_of(channel: ChannelPlan) -> SessionPlan:
    return SessionPlan(dwell=60, ramp=1, channels=[channel])


@pytest.fixture(params=["python", "c"])
def unit(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[str]]]:
    """How to start a unit with options: ``estim simulate --pty`` or the C unit."""
    if request.param == "c":
        command = [str(request.getfixturevalue("cunit").unit)]
        yield request.param, command
    else:
        yield request.param, []


def start_unit(unit: tuple[str, list[str]], *options: str) -> SimProcess:
    kind, command = unit
    if kind == "c":
        return SimProcess("--json", *options, command=command)
    return SimProcess("--pty", "--json", *options)


def concurrent_then_forced(port: str, runner: str, journal: Journal) -> dict[str, Any]:
    """Both attacks in one visit; returns what happened."""
    plans = [plan_of(GENTLE), plan_of(STRONG)]
    if runner == "threads":
        with connect(port) as device:
            results: list[Any] = [None, None]
            barrier = threading.Barrier(2)

            def caller(i: int) -> None:
                barrier.wait()
                try:
                    results[i] = device.start(plans[i], journal=journal)
                except BaseException as err:  # the result under test
                    results[i] = err

            callers = [threading.Thread(target=caller, args=(i,)) for i in range(2)]
            for t in callers:
                t.start()
            for t in callers:
                t.join()
            (session,) = [r for r in results if not isinstance(r, BaseException)]
            status = device.status()
            object.__setattr__(plans[0], "channels", (STRONG,))
            object.__setattr__(plans[1], "channels", (GENTLE,))
            try:
                session.set_amplitude(1, ATTACK_MA)
                attack = "accepted"
            except OutputLimitError as err:
                attack = str(err)
            session.stop()
            record = session.wait(timeout=10)
    else:

        async def main() -> tuple[list[Any], Any, str, Any]:
            async with aio.connect(port) as device:
                results = await asyncio.gather(
                    *(device.start(p, journal=journal) for p in plans), return_exceptions=True
                )
                (session,) = [r for r in results if not isinstance(r, BaseException)]
                status = await device.status()
                object.__setattr__(plans[0], "channels", (STRONG,))
                object.__setattr__(plans[1], "channels", (GENTLE,))
                try:
                    await session.set_amplitude(1, ATTACK_MA)
                    attack = "accepted"
                except OutputLimitError as err:
                    attack = str(err)
                await session.stop()
                return results, status, attack, await session.wait()

        results, status, attack, record = asyncio.run(main())
    return {"results": results, "status": status, "attack": attack, "record": record}


@pytest.mark.parametrize("runner", RUNNERS)
def test_two_starts_at_once_and_a_forced_plan_on_a_unit_in_another_process(
    unit: tuple[str, list[str]], runner: str, tmp_path: Path
) -> None:
    with start_unit(unit, *OPTIONS) as sim, Journal(tmp_path / "estim.db") as journal:
        seen = concurrent_then_forced(sim.port, runner, journal)
        on = sim.wait_for(lambda e: e["kind"] == "output_on")
    results, record = seen["results"], seen["record"]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1, results
    assert isinstance(refused[0], UnitBusy), refused
    ours = record.plan.channels[0]
    assert on["session_id"] == int(record.id, 16)
    assert seen["status"].channels[0].setpoint_ma == ours.amplitude_ma
    if ours == STRONG:  # judged at what the unit runs, not at the forced plan
        assert "r.m.s" in seen["attack"], seen["attack"]
    assert record.outcome == "stopped"
    assert [s for s in sim.lines if '"setpoint"' in s and f'"ua": {ATTACK_MA}000' in s] == []


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_fault_on_a_unit_in_another_process_ends_the_session_faulted(
    unit: tuple[str, list[str]], runner: str, tmp_path: Path
) -> None:
    with start_unit(unit, "over_current_at=1.5") as sim, Journal(tmp_path / "estim.db") as journal:
        if runner == "threads":
            with connect(sim.port) as device:
                record = device.start(plan_of(GENTLE), journal=journal).wait(timeout=20)
        else:

            async def main() -> Any:
                async with aio.connect(sim.port) as device:
                    session = await device.start(plan_of(GENTLE), journal=journal)
                    return await session.wait()

            record = asyncio.run(main())
        off = sim.wait_for(lambda e: e["kind"] == "output_off")
    assert record.outcome == "faulted"
    assert "OVER_CURRENT" in (record.stop_reason or "")
    assert off["reason"] != "completed"
    assert record.delivered_s is not None
    assert record.delivered_s == pytest.approx(1.5, abs=0.05)
