"""Figure 6: N units driven from one host process, on both runners.

N ``estim simulate --pty --json`` processes (the Python simulator: it logs
``output_off.max_frame_gap_ms``, the worst silence between valid frames while
output was on, which the C reference unit does not keep). This bench process
connects to each and runs N sessions at once, first on the threaded runner
(``estim.connect`` + ``device.start`` per unit), then on the asyncio runner
(``estim.aio.connect`` + ``await unit.start`` per unit, on one event loop), with
one shared journal per runner. After the run time every session is stopped.

From each unit's own log: whether its watchdog fired (a missed heartbeat the unit
acted on), and ``max_frame_gap_ms`` of its ``output_off``. CPU is
``getrusage(RUSAGE_SELF)`` of this process over the steady window between the last
start and the first stop (starting and stopping excluded, as in figure 5's steady
figure), per unit per minute. The simulators' own CPU over the same window
(``/proc/<pid>/task/*/schedstat``) is reported as a diagnostic: with 64 of them on
a small machine they compete with the host for the cores, and a simulator starved
of CPU sees a longer gap than the host left, so the gap figure errs on the safe side.
"""

from __future__ import annotations

import gc
import resource
import time
from typing import Any

from benchlib import (
    Context,
    Figure,
    LoopThread,
    Unit,
    percentile,
    proc_cpu_precise,
    say,
    start_sims,
)

import estim.aio
from estim.device import Device, connect
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.record import SessionRecord
from estim.session import Session

PLAN = SessionPlan(
    dwell=60,
    ramp=5,
    channels=[ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)],
)
GAP_GOAL_MS = 150.0
RUNNERS = ("threaded", "asyncio")


def cpu_self() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def sims_cpu(sims: list[Unit]) -> float:
    total = 0.0
    for sim in sims:
        assert sim.proc is not None
        total += proc_cpu_precise(sim.proc.pid)
    return total


class Window:
    """CPU of this process and of the simulators over the steady window."""

    def __init__(self, sims: list[Unit]) -> None:
        self.sims = sims

    def measure(self, seconds: float) -> dict[str, float]:
        c0, s0, t0 = cpu_self(), sims_cpu(self.sims), time.monotonic()
        time.sleep(seconds)
        c1, s1, t1 = cpu_self(), sims_cpu(self.sims), time.monotonic()
        return {"host_cpu": c1 - c0, "sims_cpu": s1 - s0, "wall_s": t1 - t0}


def run_threaded(
    ctx: Context, sims: list[Unit], seconds: float
) -> tuple[dict[str, float], list[SessionRecord], tuple[int, int]]:
    journal = Journal(ctx.workdir / f"scale{len(sims)}-threaded.db")
    devices: list[Device] = []
    try:
        devices = [connect(sim.port) for sim in sims]
        sessions: list[Session] = [device.start(PLAN, journal=journal) for device in devices]
        window = Window(sims).measure(seconds)
        for session in sessions:
            session.stop()
        records = [session.wait(timeout=10) for session in sessions]
        retries = sum(d.stats.retries for d in devices)
        rejected = sum(d.stats.rejected_frames for d in devices)
    finally:
        for device in devices:
            device.close()
        journal.close()
    return window, records, (retries, rejected)


def run_asyncio(
    ctx: Context, sims: list[Unit], seconds: float
) -> tuple[dict[str, float], list[SessionRecord], tuple[int, int]]:
    journal = Journal(ctx.workdir / f"scale{len(sims)}-asyncio.db")
    devices: list[estim.aio.AsyncDevice] = []
    loop = LoopThread()

    async def start() -> list[estim.aio.AsyncSession]:
        for sim in sims:
            devices.append(await estim.aio.connect(sim.port))
        return [await device.start(PLAN, journal=journal) for device in devices]

    async def stop(sessions: list[estim.aio.AsyncSession]) -> list[SessionRecord]:
        for session in sessions:
            await session.stop()
        return [await session.wait() for session in sessions]

    async def close() -> None:
        for device in devices:
            await device.close()

    try:
        sessions = loop.run(start())
        window = Window(sims).measure(seconds)
        records = loop.run(stop(sessions))
        retries = sum(d.stats.retries for d in devices)
        rejected = sum(d.stats.rejected_frames for d in devices)
    finally:
        try:
            loop.run(close())
        finally:
            loop.close()
            journal.close()
    return window, records, (retries, rejected)


class GcPauses:
    """The longest pause of this process's cyclic garbage collector while it is
    installed (a pause stops every thread that needs the GIL, heartbeats included)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.count = 0
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.count += 1
            self.longest = max(self.longest, time.perf_counter() - self._t0)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def run_n(ctx: Context, sims: list[Unit], runner: str, seconds: float) -> dict[str, Any]:
    n = len(sims)
    marks = [len(sim.log()) for sim in sims]
    run = run_threaded if runner == "threaded" else run_asyncio
    with GcPauses() as pauses:
        window, records, (retries, rejected) = run(ctx, sims, seconds)
    gaps, dogs = [], 0
    ids = {int(r.id, 16) for r in records}
    for sim, mark in zip(sims, marks, strict=True):
        off = sim.wait_for(
            lambda e: e["kind"] == "output_off" and e["session_id"] in ids, timeout=5, start=mark
        )
        gaps.append(float(off["max_frame_gap_ms"]))
        dogs += any(e["kind"] == "watchdog" for e in sim.log()[mark:])
    outcomes = sorted({r.outcome or "?" for r in records})
    if outcomes != ["stopped"] or retries or rejected:
        ctx.notes.append(
            f"scale N={n} {runner}: session outcomes {outcomes}; the driver resent {retries} "
            f"request(s) and rejected {rejected} frame(s) from the units"
        )
    if max(gaps) >= GAP_GOAL_MS:
        late = sorted(round(g) for g in gaps if g >= GAP_GOAL_MS)
        ctx.notes.append(
            f"scale N={n} {runner}: {len(late)} unit(s) saw a gap of {GAP_GOAL_MS:g} ms or more "
            f"({late}); the longest garbage-collector pause in this process meanwhile was "
            f"{pauses.longest * 1000:.1f} ms ({pauses.count} collections)"
        )
    minutes = window["wall_s"] / 60
    return {
        "watchdog_units": dogs,
        "cpu_per_unit_min": window["host_cpu"] / n / minutes,
        "sim_cpu_per_heartbeat_us": 1e6 * window["sims_cpu"] / (n * window["wall_s"] * 10),
        "worst_gap_ms": max(gaps),
        "median_gap_ms": percentile(gaps, 50),
    }


def measure(ctx: Context) -> list[Figure]:
    sizes = (8,) if ctx.quick else (1, 16, 64)
    seconds = 3.0 if ctx.quick else 10.0
    figures: list[Figure] = []
    extra: list[Figure] = []
    for n in sizes:
        say(f"figure 6: {n} unit(s) from one process, {seconds:g} s per runner")
        sims = start_sims(ctx.workdir, n, tag=f"scale{n}-")
        try:
            for runner in RUNNERS:
                short = "aio" if runner == "asyncio" else runner
                r = run_n(ctx, sims, runner, seconds)
                headline = n == max(sizes)
                units = f"{n} unit{'s' if n != 1 else ''}"
                ctx.notes.append(
                    f"scale N={n} {runner}: median of the units' worst frame gaps "
                    f"{r['median_gap_ms']:.1f} ms; the simulators used "
                    f"{r['sim_cpu_per_heartbeat_us']:.0f} us of CPU per unit per 100 ms "
                    "(heartbeat + its share of the status poll, their whole loop)"
                )
                if headline and runner == "threaded":
                    extra.append(
                        Figure(
                            "sim_process_cpu_per_heartbeat_period",
                            r["sim_cpu_per_heartbeat_us"],
                            "us",
                            ctx.shared.get("sim_cpu_per_heartbeat_us"),
                            "figure 9: receive + read_output of one heartbeat, in-process",
                            "info: the whole simulator process per 100 ms of a session "
                            f"(server loop, wake-ups, status poll share; N={n}, schedstat)",
                            None,
                            headline=True,
                            title="Python simulator process: CPU per heartbeat period",
                        )
                    )
                figures += [
                    Figure(
                        f"scale_{n}_{short}_watchdog_faults",
                        r["watchdog_units"],
                        "units",
                        n,
                        f"units in the run (N={n})",
                        "0 units with a watchdog fault",
                        r["watchdog_units"] == 0,
                        headline=headline,
                        title=f"{units} from one process, {runner}: watchdog faults",
                    ),
                    Figure(
                        f"scale_{n}_{short}_worst_frame_gap",
                        r["worst_gap_ms"],
                        "ms",
                        100.0,
                        "the 100 ms heartbeat period",
                        f"< {GAP_GOAL_MS:g} ms",
                        r["worst_gap_ms"] < GAP_GOAL_MS,
                        headline=headline,
                        title=f"{units}, {runner}: worst gap between heartbeats (unit's log)",
                    ),
                    Figure(
                        f"scale_{n}_{short}_cpu_per_unit_min",
                        r["cpu_per_unit_min"],
                        "s/min",
                        ctx.shared.get(f"{short}_steady_cpu_per_min"),
                        f"one session's steady CPU per minute, {runner} child (figure 5)",
                        "info: reported per unit (figure 5's goal is 0.1 s per session-minute)",
                        None,
                        headline=headline,
                        title=f"{units}, {runner}: host CPU per unit per minute",
                    ),
                ]
        finally:
            for sim in sims:
                sim.close()
    return figures + extra
