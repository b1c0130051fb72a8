"""An example charting integration: run a plan on a simulated unit, stream its events,
and file the session in the chart as a FHIR bundle and a printable HTML report.

    python examples/charting_app.py PLAN.json OUTDIR           # virtual time: instant
    python examples/charting_app.py - OUTDIR < PLAN.json       # the plan on stdin
    python examples/charting_app.py PLAN.json OUTDIR --real-time   # sim:// in real time

PLAN.json is what a charting app sends (schemas/session-plan.schema.json), e.g.
{"dwell": "1m", "patient_ref": "P-0042", "site": "left vastus lateralis",
 "channels": [{"channel": 1, "frequency_hz": 2, "pulse_width_us": 250, "amplitude_ma": 12}]}

Each event is one JSON line on stdout as it happens. At the end OUTDIR holds the
journal (estim.db) and, for the session, SESSION_ID.fhir.json and SESSION_ID.html,
made from the journal's record. It runs on ``estim.aio``, as an asyncio charting
app would; a real unit: ``estim.aio.connect("/dev/ttyUSB0")`` under ``asyncio.run``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import estim
import estim.aio
from estim.export import FORMATS


@contextlib.contextmanager
def simulated_unit(real_time: bool) -> Iterator[tuple[str, estim.ManualClock | None]]:
    """The URL of a simulated unit and its clock: a virtual clock (a session takes no
    time), or ``sim://`` in real time (no clock of its own)."""
    if real_time:
        yield "sim://", None
        return
    from estim.sim import SimulatedUnit, serve

    clock = estim.ManualClock()
    with serve(SimulatedUnit(clock=clock)) as url:
        yield url, clock


async def run_plan(url: str, plan: estim.SessionPlan, journal: estim.Journal) -> str:
    """Run ``plan``, print each event as it happens; returns the session's id."""
    async with estim.aio.connect(url) as unit:
        session = await unit.start(plan, journal=journal)
        async for event in session.events():
            print_event(event)
        await session.wait()
        return session.id


def print_event(event: estim.EventRecord) -> None:
    print(json.dumps({"t": event.t, "kind": event.kind, **event.data}, default=str), flush=True)


def refuse(words: str) -> int:
    """A request that cannot be carried out: one line, exit 2."""
    print(f"charting_app: {words}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="the plan as JSON: a file, or - for stdin")
    parser.add_argument("outdir", type=Path, help="where the journal, bundle and report go")
    parser.add_argument("--real-time", action="store_true", help="sim:// on the real clock")
    args = parser.parse_args(argv)

    try:
        text = sys.stdin.read() if args.plan == "-" else Path(args.plan).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return refuse(f"cannot read the plan: {err}")
    try:
        plan = estim.SessionPlan.model_validate_json(text)
    except ValueError as err:
        return refuse(f"the plan is not valid: {err}")
    args.outdir.mkdir(parents=True, exist_ok=True)
    try:
        with (
            estim.Journal(args.outdir / "estim.db") as journal,
            simulated_unit(args.real_time) as (url, clock),
        ):
            session_id = estim.aio.run(run_plan(url, plan, journal), clock=clock)
            record = journal.get(session_id)  # the journal's record: what the chart files
    except estim.PlanError as err:  # the unit's own limits refused it: nothing started
        return refuse(str(err))
    except estim.EstimError as err:  # the unit or the journal failed: output is off
        print(f"charting_app: {err}", file=sys.stderr)
        return 1
    for name, suffix in (("fhir", "fhir.json"), ("html", "html")):
        (args.outdir / f"{record.id}.{suffix}").write_bytes(FORMATS[name].render([record]))
    print(
        json.dumps(
            {"session": record.id, "outcome": record.outcome, "delivered_s": record.delivered_s}
        ),
        flush=True,
    )
    return 0 if record.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
