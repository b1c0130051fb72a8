"""kill -9 of a real host process at a random instant of its session (issues 5 and 7).

``estim simulate --pty --json`` serves a unit in one process; ``estim run`` drives
it in another and is killed with SIGKILL at a seeded random instant after its
output started (at once, within the first few milliseconds while it is writing
its first journal events, during the ramp, or later). Each time:

- the unit's output goes off within the watchdog period (+ one frame) of the
  host's last frame, measured from the unit's own log (``watchdog.last_frame``,
  ``output_off.t``, and ``late_ms``, how late the simulator's loop woke up), and
  within the watchdog period (+ a scheduling margin) of the kill, measured with
  ``time.monotonic()`` just before ``os.kill`` (the simulator's ``t`` is the same
  clock, shared across processes on Linux);
- the journal opens cleanly with ``Journal(path)``, passes SQLite's integrity
  check, and shows the killed session as ``interrupted``;
- every period of output in the unit's log (over all runs) has its start record.

One simulator serves every run; ``estim clear-fault`` clears the latched
WATCHDOG fault between runs, as an operator would.

Scale (tests/reliability_helpers.py): ``CI_RUNS`` kills by default,
``FULL_RUNS`` with ``ESTIM_RELIABILITY=full``, or a multiple of the CI count.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from estim.journal import Journal

from .procs import SimProcess
from .reliability_helpers import SEED, output_periods, scaled

CI_RUNS = 3
FULL_RUNS = 120
WATCHDOG_S = 0.5
#: one frame on the wire: a HEARTBEAT is 19 bytes, 1.7 ms at 115200 baud; a pty is faster
FRAME_S = 0.002
#: how late a loaded 2-core machine may run the simulator's loop, or deliver the kill
SCHEDULING_MARGIN_S = 0.15

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="ptys and a shared monotonic clock")


def _events(sim: SimProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in sim.lines if line.startswith("{")]


def _read_until(sim: SimProcess, deadline: float) -> None:
    """Take the simulator's log lines as they come until ``deadline`` (monotonic):
    this is how the kill instant is chosen, not a synchronisation."""
    while (left := deadline - time.monotonic()) > 0:
        sim.readline(left)


def _estim(*args: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "estim", *args], env=env, **kwargs)


def _delay(rng: random.Random) -> float:
    """When to kill, in seconds after the unit logged output on."""
    return rng.choice(
        [
            0.0,  # the host may not even have its START acknowledged
            rng.uniform(0.0, 0.05),  # while it journals start_accepted, output_started
            rng.uniform(0.05, 2.0),  # during the 2 s ramp
            rng.uniform(2.0, 4.0),  # running
        ]
    )


def test_kill_9_at_random_instants(tmp_path: Path) -> None:
    runs = scaled(CI_RUNS, FULL_RUNS)
    rng = random.Random(SEED)
    db = tmp_path / "estim.db"
    env = {**os.environ, "ESTIM_HOME": str(tmp_path / "home"), "ESTIM_DB": str(db)}
    env.pop("ESTIM_PORT", None)
    results: list[dict[str, Any]] = []
    with SimProcess("--pty", "--json") as sim:
        for run in range(runs):
            stderr = (tmp_path / f"run{run}.err").open("wb")
            host = _estim(
                "run",
                "--port",
                sim.port,
                "--dwell",
                "1m",
                "--ramp",
                "2",
                "-c",
                "1:2:250:5",
                "--yes",
                "--json",
                "--db",
                str(db),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            try:
                on = sim.wait_for(lambda e: e["kind"] == "output_on", timeout=60)
                _read_until(sim, time.monotonic() + _delay(rng))
                assert host.poll() is None, f"run {run}: the host exited before the kill"
                killed_at = time.monotonic()
                os.kill(host.pid, signal.SIGKILL)
                assert host.wait(timeout=10) == -signal.SIGKILL
            finally:
                if host.poll() is None:
                    host.kill()
                    host.wait(timeout=10)
                stderr.close()

            watchdog = sim.wait_for(lambda e: e["kind"] == "watchdog", timeout=10)
            off = sim.wait_for(lambda e: e["kind"] == "output_off", timeout=10)
            assert off["session_id"] == on["session_id"]
            assert off["reason"] == "fault:WATCHDOG", off
            off_real = off["t"] + watchdog["late_ms"] / 1000  # when the loop actually acted
            results.append(
                {
                    "after_last_frame": off_real - watchdog["last_frame"],
                    "after_kill": off_real - killed_at,
                    "late_ms": watchdog["late_ms"],
                }
            )
            assert off["t"] - watchdog["last_frame"] <= WATCHDOG_S + FRAME_S, (run, watchdog, off)
            assert off["max_frame_gap_ms"] <= WATCHDOG_S * 1000 + 1e-3, off
            assert (
                off_real - watchdog["last_frame"] <= WATCHDOG_S + FRAME_S + SCHEDULING_MARGIN_S
            ), (
                run,
                watchdog,
                off,
            )
            assert off_real - killed_at <= WATCHDOG_S + FRAME_S + SCHEDULING_MARGIN_S, (
                run,
                killed_at,
                watchdog,
                off,
            )

            journal_id = f"{on['session_id']:08x}"
            with Journal(db) as journal:  # opens cleanly: no exception, and recovers
                assert journal_id in journal.interrupted, (run, journal.interrupted)
                row = journal.session_row(journal_id)
                assert row is not None
                assert row["outcome"] == "interrupted"
                assert row["stop_reason"]  # why it is unfinished
                events = journal.event_rows(journal_id)
                assert events[0]["kind"] == "start_requested"
                assert events[-1]["kind"] == "interrupted"
            with contextlib.closing(sqlite3.connect(db)) as check:
                assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)

            clear = subprocess.run(
                [sys.executable, "-m", "estim", "clear-fault", "--port", sim.port],
                env=env,
                capture_output=True,
                timeout=60,
            )
            assert clear.returncode == 0, clear.stderr.decode()
            sim.wait_for(lambda e: e["kind"] == "fault_cleared", timeout=10)

        periods = output_periods(_events(sim))
    assert len(periods) == runs
    assert all(p.reason == "fault:WATCHDOG" for p in periods)
    with Journal(db) as journal:
        assert journal.interrupted == []  # every killed session was marked at its reopen
        rows = {r["id"]: r for r in journal.session_rows()}
        unrecorded = [
            p
            for p in periods
            if p.journal_id not in rows
            or journal.event_rows(p.journal_id)[0]["kind"] != "start_requested"
        ]
        assert unrecorded == []
        assert {rows[p.journal_id]["outcome"] for p in periods} == {"interrupted"}
    worst = max(r["after_kill"] for r in results)
    assert worst <= WATCHDOG_S + FRAME_S + SCHEDULING_MARGIN_S
    print(  # shown with pytest -s or -rP
        f"kill -9: {runs} runs; output off after the kill: max {worst * 1000:.1f} ms; after the "
        f"last frame: max {max(r['after_last_frame'] for r in results) * 1000:.1f} ms; simulator "
        f"lateness max {max(r['late_ms'] for r in results):.1f} ms"
    )
