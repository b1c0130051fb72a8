"""Figure 6: N units driven from one host process.

N separate ``estim simulate --pty --json`` processes; this bench process connects
to each and runs N sessions at once (one ``connect`` + ``device.start`` per unit,
one shared journal). After the run time every session is stopped. From each unit's
own log: whether its watchdog fired (a missed heartbeat the unit acted on), and
``max_frame_gap_ms`` of its ``output_off`` (the worst silence between valid frames
while output was on). CPU is ``getrusage(RUSAGE_SELF)`` of this process over the
steady window between the last start and the first stop (starting and stopping
excluded, as in figure 5's steady figure), per unit per minute.
"""

from __future__ import annotations

import contextlib
import resource
import time

from benchlib import Context, Figure, percentile, say, start_sims

from estim.device import connect
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan

PLAN = SessionPlan(
    dwell=60,
    ramp=5,
    channels=[ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)],
)
GAP_GOAL_MS = 250.0


def cpu_self() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def run_n(ctx: Context, n: int, seconds: float) -> dict[str, float]:
    sims = start_sims(ctx.workdir, n, tag=f"scale{n}-")
    try:
        with contextlib.ExitStack() as stack:
            journal = stack.enter_context(Journal(ctx.workdir / f"scale{n}.db"))
            devices = [stack.enter_context(connect(sim.port)) for sim in sims]
            sessions = [device.start(PLAN, journal=journal) for device in devices]
            c0, t0 = cpu_self(), time.monotonic()
            time.sleep(seconds)
            c1, t1 = cpu_self(), time.monotonic()
            for session in sessions:
                session.stop()
            records = [session.wait(timeout=10) for session in sessions]
            retries = sum(d.link.stats.retries for d in devices)
            rejected = sum(d.link.stats.rejected_frames for d in devices)
        offs, dogs = [], 0
        for sim in sims:
            off = sim.wait_for(lambda e: e["kind"] == "output_off", timeout=5)
            offs.append(off)
            dogs += any(e["kind"] == "watchdog" for e in sim.log())
        outcomes = sorted({r.outcome or "?" for r in records})
        if outcomes != ["stopped"] or retries or rejected:
            ctx.notes.append(
                f"scale N={n}: session outcomes {outcomes}; the driver resent {retries} request(s) "
                f"and rejected {rejected} frame(s) from the units"
            )
        gaps = [float(o["max_frame_gap_ms"]) for o in offs]
        return {
            "watchdog_units": dogs,
            "cpu_per_unit_min": (c1 - c0) / n / ((t1 - t0) / 60),
            "worst_gap_ms": max(gaps),
            "median_gap_ms": percentile(gaps, 50),
            "wall_s": t1 - t0,
        }
    finally:
        for sim in sims:
            sim.close()


def measure(ctx: Context) -> list[Figure]:
    sizes = (1, 4) if ctx.quick else (1, 4, 16)
    seconds = 5.0 if ctx.quick else 10.0
    if ctx.quick:
        ctx.notes.append(
            "scale: N=16 is skipped in --quick (it does not fit the minute); run the full mode"
        )
    baseline_cpu = ctx.shared.get("cli_steady_cpu_per_min")
    figures: list[Figure] = []
    for n in sizes:
        say(f"figure 6: {n} unit(s), one host process, {seconds:g} s")
        r = run_n(ctx, n, seconds)
        figures += [
            Figure(
                f"scale_{n}_units_watchdog_faults",
                r["watchdog_units"],
                "units",
                n,
                f"units in the run (N={n})",
                "0 units with a watchdog fault",
                r["watchdog_units"] == 0,
            ),
            Figure(
                f"scale_{n}_units_cpu_per_unit_min",
                r["cpu_per_unit_min"],
                "s/min",
                baseline_cpu,
                "one estim run session's steady CPU per minute (figure 5)",
                "<= 0.3 s per unit per minute (figure 5's goal)",
                r["cpu_per_unit_min"] <= 0.3,
            ),
            Figure(
                f"scale_{n}_units_worst_frame_gap",
                r["worst_gap_ms"],
                "ms",
                100.0,
                "the 100 ms heartbeat period",
                f"< {GAP_GOAL_MS:g} ms (half the 500 ms watchdog)",
                r["worst_gap_ms"] < GAP_GOAL_MS,
            ),
        ]
    return figures
