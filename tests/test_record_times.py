"""Record times are relative to the unit's output-on (issue 19 item 1): whatever
the unit's clock read when the session began (0, 100 s, 1 s before its 32-bit
wrap), the record, every export and the plot tell the same story: a session
stopped 2 s into a 5 s ramp to 10 mA reached 4 mA, not 10, and its plot ends at
2 s. Both runners, on a simulated unit whose clock has run for that long.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from estim.clock import ManualClock
from estim.export import FORMATS
from estim.export.facts import highest_reached, reached_trace
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.record import SessionRecord
from estim.sim import SimulatedUnit, serve

from .runners import RUNNERS, connector

PLAN = SessionPlan(
    dwell=60,
    ramp=5,
    channels=[ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=10)],
)

#: the unit's clock at output on: fresh, up 100 s, 1 s before its 32-bit ms wrap
UPTIMES = {"0 s": 0.0, "100 s": 100.0, "1 s before the wrap": (2**32 - 1000) / 1000}


def session_stopped_in_the_ramp(runner: str, uptime: float, tmp_path: Path) -> SessionRecord:
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    clock.advance(uptime)  # the unit has been on this long
    with (
        serve(unit) as url,
        Journal(tmp_path / "estim.db") as journal,
        connector(runner, clock)(url) as device,
    ):
        session = device.start(PLAN, journal=journal)
        clock.advance(2.0)
        session.stop()
        record = session.wait(timeout=10)
        assert record == journal.get(record.id)
    return record


@pytest.mark.parametrize("uptime", sorted(UPTIMES), ids=str)
@pytest.mark.parametrize("runner", RUNNERS)
def test_a_stop_in_the_ramp_reports_what_the_ramp_reached(
    runner: str, uptime: str, tmp_path: Path
) -> None:
    record = session_stopped_in_the_ramp(runner, UPTIMES[uptime], tmp_path)
    on = next(e for e in record.events if e.kind == "output_started")
    assert on.output_s == 0.0
    off = next(e for e in record.events if e.kind == "unit_stopped")
    assert off.output_s == pytest.approx(2.0, abs=0.01)
    assert record.delivered_s == pytest.approx(2.0, abs=0.01)
    times = [e.output_s for e in record.events if e.output_s is not None]
    assert times == sorted(times)  # never backwards in time
    assert max(times) <= record.delivered_s + 0.01
    # the peak is what the ramp allows by the moment output went off: 10 mA * 2 / 5
    assert highest_reached(record, 1) == pytest.approx(4.0, abs=0.05)
    trace = reached_trace(record, 1)
    assert trace[-1] == (pytest.approx(2.0, abs=0.01), 0.0)
    assert all(ma <= 4.05 for _, ma in trace)
    # every export says so
    row = next(csv.DictReader(io.StringIO(FORMATS["csv"].render([record]).decode())))
    assert float(row["ch1_peak_reached_ma"]) == pytest.approx(4.0, abs=0.05)
    bundle = json.loads(FORMATS["fhir"].render([record]))
    reached = [
        c["valueQuantity"]["value"]
        for entry in bundle["entry"]
        for c in entry["resource"].get("component", [])
        if c.get("code", {}).get("text") == "Highest amplitude reached"
    ]
    assert reached == [pytest.approx(4.0, abs=0.05)]
    plot = plot_of(FORMATS["html"].render([record]).decode())
    # the axis runs over the planned minute (not to the unit's uptime plus 2 s), and the
    # stop marker stands at 2 s of it, inside the plot
    assert plot["x_labels"][-1] == 60
    assert plot["stop_x"] == pytest.approx(plot["left"] + 2.0 / 60 * plot["width"], abs=1.0)
    assert plot["reached_xs"] == sorted(plot["reached_xs"])


def plot_of(html: str) -> dict[str, Any]:
    """The first plot's x-axis labels, its stop marker and its reached line, read back
    from the SVG as a browser would draw it."""
    svg = html[html.index("<svg") : html.index("</svg>")]
    labels = [float(v) for v in re.findall(r'text-anchor="middle">([0-9.]+)</text>', svg)]
    marker = re.search(
        r'<line x1="([0-9.]+)" x2="[0-9.]+" y1="[0-9.]+" y2="[0-9.]+" stroke="#b00020"', svg
    )
    lines = re.findall(r'<polyline points="([^"]+)" fill="none" stroke="#1f4e9c"', svg)
    xs = [float(p.split(",")[0]) for p in lines[0].split()] if lines else []
    return {
        "x_labels": labels,
        "stop_x": float(marker.group(1)) if marker else None,
        "reached_xs": xs,
        "left": 48.0,
        "width": 640.0 - 48.0 - 16.0,
    }


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_completed_session_across_the_unit_s_clock_wrap(runner: str, tmp_path: Path) -> None:
    """Output on 1 s before the unit's 32-bit clock wraps; the session runs its whole
    minute across the wrap: times stay relative to output on, the peak is the plan's."""
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    clock.advance(UPTIMES["1 s before the wrap"])
    with (
        serve(unit) as url,
        Journal(tmp_path / "estim.db") as journal,
        connector(runner, clock)(url) as device,
    ):
        record = device.start(PLAN, journal=journal).wait(timeout=120)
    assert record.outcome == "completed"
    units = [e.unit_ms for e in record.events if e.unit_ms is not None]
    assert min(units) < 60_000 < 2**32 - 60_000 < max(units)  # it did wrap
    times = [e.output_s for e in record.events if e.output_s is not None]
    assert times == sorted(times)
    assert max(times) == pytest.approx(60.0, abs=0.01)
    assert highest_reached(record, 1) == 10.0
    plot = plot_of(FORMATS["html"].render([record]).decode())
    assert plot["x_labels"][-1] == 60
    assert plot["stop_x"] is None  # completed: no stop marker


# --- both units in another process, over a real pty, in real time -----------------------

#: the unit's clock at boot (ms): up 100 s; 1 s before its 32-bit wrap
BOOT_CLOCKS = {"100 s": 100_000, "1 s before the wrap": 2**32 - 1000}


@pytest.mark.parametrize("boot", sorted(BOOT_CLOCKS), ids=str)
@pytest.mark.parametrize("unit", ["python", "c"])
@pytest.mark.parametrize("runner", RUNNERS)
def test_a_stop_in_the_ramp_on_a_unit_in_another_process(
    runner: str, unit: str, boot: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Stopped 1.5 s into a 5 s ramp to 10 mA: 3 mA reached, whatever the unit's clock
    read when it booted (``clock_start_ms``), on the simulator and the C unit."""
    import asyncio

    from estim import aio
    from estim.device import connect

    from .procs import SimProcess

    option = f"clock_start_ms={BOOT_CLOCKS[boot]}"
    if unit == "c":
        sim = SimProcess("--json", option, command=[str(request.getfixturevalue("cunit").unit)])
    else:
        sim = SimProcess("--pty", "--json", option)
    with sim, Journal(tmp_path / "estim.db") as journal:
        if runner == "threads":
            with connect(sim.port) as device:
                session = device.start(PLAN, journal=journal)
                sim.wait_for(lambda e: e["kind"] == "output_on")
                stopped_at = sim.wait_for(lambda e: e["kind"] == "level" and e["ua"] >= 3000)
                session.stop()
                record = session.wait(timeout=10)
        else:

            async def main() -> SessionRecord:
                async with aio.connect(sim.port) as device:
                    session = await device.start(PLAN, journal=journal)
                    await asyncio.to_thread(
                        sim.wait_for, lambda e: e["kind"] == "level" and e["ua"] >= 3000
                    )
                    await session.stop()
                    return await session.wait()

            record = asyncio.run(main())
            stopped_at = None
        off = sim.wait_for(lambda e: e["kind"] == "output_off")
    assert stopped_at is None or stopped_at["ua"] >= 3000
    delivered = record.delivered_s
    assert delivered is not None
    assert delivered == pytest.approx(off["delivered_ms"] / 1000)
    # the ramp's level at the moment output went off: 10 mA over 5 s
    expected = min(10.0, 10.0 * delivered / 5.0)
    assert highest_reached(record, 1) == pytest.approx(expected, abs=0.15)
    times = [e.output_s for e in record.events if e.output_s is not None]
    assert times == sorted(times)
    assert max(times) <= delivered + 0.05
