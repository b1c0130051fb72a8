"""Where between figure 5's floor and ``estim run`` the host's CPU goes: a ladder of
hosts on the C unit, each one layer more than the last (``bench/floor_loop.py``), and
``estim run`` itself, in alternating rounds.

    python bench/floor_ladder.py [ROUNDS]     # 2 by default, about 3.5 minutes

Each host drives a C unit of its own (a fresh one per sample) through one session;
its CPU (``/proc/<pid>/task/*/schedstat``) is taken over 15 s, from 2 s after the
unit's ``output_on``, and given per 100 ms heartbeat period. Prints each round and
the medians (bench/PROFILE.md section 8).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Unit, build_cunit, end_child, estim_run_args, proc_cpu_precise, spawn

HERE = Path(__file__).resolve().parent
RUNGS = ("base", "decode", "conn", "thread-wake-conn", "estim")
WINDOW_S = 15.0


def sample(rung: str, binary: Path, work: Path, n: int) -> float:
    unit = Unit(work, (), tag=f"{rung}{n}", kind="cunit", binary=binary)
    unit.wait_port()
    if rung == "estim":
        args = estim_run_args(unit.port, work / f"{rung}{n}.db")
    else:
        args = [sys.executable, str(HERE / "floor_loop.py"), rung, unit.port, str(1000 + n)]
    host = spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        unit.wait_for(lambda e: e["kind"] == "output_on", timeout=30)
        time.sleep(2.0)
        before = proc_cpu_precise(host.pid)
        time.sleep(WINDOW_S)
        used = proc_cpu_precise(host.pid) - before
    finally:
        end_child(host)
        unit.close()
    return used / (WINDOW_S * 10) * 1e6


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with tempfile.TemporaryDirectory(prefix="estim-ladder-") as tmp:
        work = Path(tmp)
        binary = build_cunit(work)
        us: dict[str, list[float]] = {rung: [] for rung in RUNGS}
        for n in range(rounds):
            for rung in RUNGS:
                us[rung].append(sample(rung, binary, work, n))
            print(f"round {n}: " + ", ".join(f"{r} {us[r][-1]:.0f}" for r in RUNGS), flush=True)
    base = statistics.median(us["base"])
    for rung in RUNGS:
        mid = statistics.median(us[rung])
        print(f"{rung:18} {mid:6.0f} us per 100 ms period  {mid / base:.2f}x base")


if __name__ == "__main__":
    main()
