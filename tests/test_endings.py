"""Every way a session can end is recorded as what happened (issue 18 item 3):
a program that stops and ends without ``wait()``, one that ends while a session
runs, Ctrl-C while awaiting ``wait()``; on both runners, with a journal of the
program's own and with ``journal=None`` (the default journal).

Each program is a real process on ``sim://`` in real time; it says when output is
on, and the journal it leaves is read afterwards. Nothing here sleeps: the
programs wait for the unit's events, the test for their lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from estim.journal import Journal

from .runners import RUNNERS

PRELUDE = """
import asyncio, sys, threading
import estim, estim.aio
plan = estim.SessionPlan(dwell=60, ramp=1, channels=[estim.ChannelPlan(
    channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)])
DB = sys.argv[1]
journal = None if DB == "-" else estim.Journal(DB)
"""

#: the program's body, by runner and ending: it prints RUNNING once output is on
BODIES = {
    ("threads", "stop-then-exit"): """
device = estim.connect("sim://")
on = threading.Event()
session = device.start(plan, journal=journal, on_event=lambda e: e.kind == "ramp_done" and on.set())
on.wait(10)
session.stop()
print("RUNNING", session.id, flush=True)
""",
    ("threads", "exit-while-running"): """
device = estim.connect("sim://")
on = threading.Event()
session = device.start(plan, journal=journal, on_event=lambda e: e.kind == "ramp_done" and on.set())
on.wait(10)
print("RUNNING", session.id, flush=True)
""",
    ("threads", "ctrl-c-in-wait"): """
device = estim.connect("sim://")
on = threading.Event()
session = device.start(plan, journal=journal, on_event=lambda e: e.kind == "ramp_done" and on.set())
on.wait(10)
print("RUNNING", session.id, flush=True)
session.wait()
""",
    ("asyncio", "stop-then-exit"): """
async def main():
    unit = await estim.aio.connect("sim://")
    session = await unit.start(plan, journal=journal)
    async for event in session.events():
        if event.kind == "ramp_done":
            break
    await session.stop()
    print("RUNNING", session.id, flush=True)
asyncio.run(main())
""",
    ("asyncio", "exit-while-running"): """
async def main():
    unit = await estim.aio.connect("sim://")
    session = await unit.start(plan, journal=journal)
    async for event in session.events():
        if event.kind == "ramp_done":
            break
    print("RUNNING", session.id, flush=True)
asyncio.run(main())
""",
    ("asyncio", "ctrl-c-in-wait"): """
async def main():
    unit = await estim.aio.connect("sim://")
    session = await unit.start(plan, journal=journal)
    async for event in session.events():
        if event.kind == "ramp_done":
            break
    print("RUNNING", session.id, flush=True)
    await session.wait()
asyncio.run(main())
""",
}

#: what the record must say, by ending
EXPECTED = {
    "stop-then-exit": "operator",
    "exit-while-running": "the program ended while the session ran",
    "ctrl-c-in-wait": None,  # Ctrl-C (threads), or the cancelled wait (asyncio): see below
}


def run_program(tmp_path: Path, runner: str, ending: str, own_journal: bool) -> tuple[str, str]:
    """Run the program; returns (session id, stderr). Its journal is in tmp_path."""
    source = PRELUDE + textwrap.dedent(BODIES[(runner, ending)])
    db = str(tmp_path / "estim.db") if own_journal else "-"
    env = {
        **os.environ,
        "ESTIM_HOME": str(tmp_path / "home"),
        "ESTIM_DB": str(tmp_path / "estim.db"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", source, db],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("RUNNING"), (line, proc.communicate(timeout=30))
    if ending == "ctrl-c-in-wait":
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    return line.split()[1], stderr


@pytest.mark.parametrize("own_journal", [True, False], ids=["own-journal", "journal-none"])
@pytest.mark.parametrize("ending", sorted(EXPECTED))
@pytest.mark.parametrize("runner", RUNNERS)
def test_a_session_whose_program_ends_is_recorded_as_what_happened(
    tmp_path: Path, runner: str, ending: str, own_journal: bool
) -> None:
    session_id, stderr = run_program(tmp_path, runner, ending, own_journal)
    with Journal.open_existing(tmp_path / "estim.db") as journal:
        record = journal.get(session_id)
    assert record.outcome == "stopped", (record.stop_reason, stderr)
    assert record.delivered_s is not None
    assert 0 < record.delivered_s < 60
    assert "interrupted" not in [e.kind for e in record.events]
    expected = EXPECTED[ending]
    if expected is not None:
        assert record.stop_reason == expected
    elif runner == "threads":
        assert record.stop_reason == "the program ended while the session ran (Ctrl-C)"
    else:
        assert record.stop_reason == "the task waiting for the session was cancelled"
    assert [e.kind for e in record.events][-1] == "ended"
