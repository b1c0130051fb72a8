"""Figure 3: the unit's watchdog when the host process dies.

For each run: a fresh simulator; a child ``estim run --port PTY --dwell 1m
-c 1:2:250:5 --yes --db TMP``; wait for the unit's ``output_on`` in the
simulator's log, then 0.5-1.5 s more (seeded random); ``kill -9`` the child
(host ``time.monotonic()`` just before ``os.kill``); then read the unit's
``watchdog`` and ``output_off`` entries.

Reported: kill -> ``output_off.t``; ``output_off.t - watchdog.last_frame`` (the
watchdog period as the unit applied it); and kill -> the moment the simulator
actually acted (``output_off.t`` + the watchdog entry's ``late_ms``: the
simulator logs a timed action at its deadline, and ``late_ms`` says how much
later its loop ran it).

Goal: at most the watchdog period (500 ms) plus one frame; "one frame" is the
wire time of one HEARTBEAT frame (18 bytes) at 115200 baud, 1.5625 ms.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

from benchlib import Context, Figure, Sim, end_child, estim_run_args, percentile, say, spawn

WATCHDOG_MS = 500.0
FRAME_MS = 18 * 10 / 115200 * 1000
LIMIT_MS = WATCHDOG_MS + FRAME_MS


def one_run(ctx: Context, rng: random.Random, i: int) -> dict[str, float]:
    sim = Sim(ctx.workdir, (), tag=f"wd{i}")
    host = None
    try:
        port = sim.wait_port()
        with open(ctx.workdir / f"wd{i}-run.out", "wb") as out:
            host = spawn(
                estim_run_args(port, ctx.workdir / f"wd{i}.db"),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=ctx.env(),
            )
        on = sim.wait_for(lambda e: e["kind"] == "output_on", timeout=30)
        delay = rng.uniform(0.5, 1.5)
        time.sleep(max(0.0, on["t"] + delay - time.monotonic()))
        if host.poll() is not None:
            raise RuntimeError(f"estim run ended before the kill (exit {host.returncode})")
        t_kill = time.monotonic()
        os.kill(host.pid, signal.SIGKILL)
        host.wait(timeout=10)
        off = sim.wait_for(lambda e: e["kind"] == "output_off", timeout=5)
        dog = next((e for e in sim.log() if e["kind"] == "watchdog"), None)
        if off["reason"] != "fault:WATCHDOG" or dog is None:
            raise RuntimeError(f"output went off with {off['reason']!r}, not by the watchdog")
        return {
            "kill_to_off_ms": (off["t"] - t_kill) * 1000,
            "frame_to_off_ms": (off["t"] - dog["last_frame"]) * 1000,
            "kill_to_acted_ms": (off["t"] + dog["late_ms"] / 1000 - t_kill) * 1000,
            "late_ms": dog["late_ms"],
            "gap_ms": off["max_frame_gap_ms"],
        }
    finally:
        if host is not None:
            end_child(host, signal.SIGKILL)
        sim.close()


def measure(ctx: Context) -> list[Figure]:
    runs = 3 if ctx.quick else 10
    say(f"figure 3: watchdog after kill -9 of estim run, {runs} runs")
    rng = random.Random(ctx.seed + 3)
    results = [one_run(ctx, rng, i) for i in range(runs)]
    col = {k: [r[k] for r in results] for k in results[0]}
    goal = f"<= {LIMIT_MS:g} ms (500 ms watchdog + one 18-byte frame at 115200 baud)"
    base = "the unit's watchdog period"
    worst = f"max of {runs} runs"
    late = max(col["late_ms"])
    if late > FRAME_MS:
        ctx.notes.append(
            f"watchdog: the simulator ran its watchdog up to {late:.2f} ms after the deadline it "
            "logs as output_off.t (field late_ms of the watchdog entry)"
        )
    return [
        Figure(
            "watchdog_kill_to_off_p50",
            percentile(col["kill_to_off_ms"], 50),
            "ms",
            WATCHDOG_MS,
            f"{base}; p50 of {runs} runs",
            goal,
            percentile(col["kill_to_off_ms"], 50) <= LIMIT_MS,
            headline=False,
            title="kill -9 of the host to output off (watchdog), p50",
        ),
        Figure(
            "watchdog_kill_to_off_max",
            max(col["kill_to_off_ms"]),
            "ms",
            WATCHDOG_MS,
            f"{base}; {worst}",
            goal,
            max(col["kill_to_off_ms"]) <= LIMIT_MS,
            title="kill -9 of the host to output off (watchdog), worst",
        ),
        Figure(
            "watchdog_last_frame_to_off_max",
            max(col["frame_to_off_ms"]),
            "ms",
            WATCHDOG_MS,
            f"{base}; {worst}",
            goal,
            max(col["frame_to_off_ms"]) <= LIMIT_MS,
            headline=False,
            title="last frame to output off (the watchdog period as applied), worst",
        ),
        Figure(
            "watchdog_kill_to_acted_max",
            max(col["kill_to_acted_ms"]),
            "ms",
            WATCHDOG_MS,
            f"{base}; {worst}; output_off.t + late_ms",
            goal,
            max(col["kill_to_acted_ms"]) <= LIMIT_MS,
            headline=False,
            title="kill -9 to the simulator acting (output off + late_ms), worst",
        ),
    ]
