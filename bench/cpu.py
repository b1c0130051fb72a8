"""Figures 4 and 5: dwell accuracy of one real-time session, and the host's CPU.

A child ``estim run --port PTY --dwell 1m -c 1:2:250:5 --yes --db TMP`` runs a
session on a simulator process. Beside it, started at the same instant and killed
the instant it exits (so over the same wall time), runs the baseline: an idle
``python -c "import estim.cli, time; time.sleep(...)"``.

- Steady CPU: ``/proc/<pid>/stat`` (user + system, 10 ms ticks) sampled when the
  unit logs ``output_on`` and again W seconds later, scaled to one minute.
  The baseline child is sampled the same way, W seconds from when its import is done.
- Whole-process CPU: ``os.wait4`` of the child (start-up, imports and shutdown
  included), per minute of session. Full mode runs the whole 60 s session (W = 58 s;
  the same run gives figure 4). Quick mode SIGINTs the session W = 8 s after output
  starts and scales to per-minute, which multiplies the start-up cost by 7.5: that
  figure is then only informative, the steady figure carries the goal.
- Figure 4 (full mode only): the unit's ``output_off.delivered_ms`` minus the
  planned 60,000 ms.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time

from benchlib import (
    Context,
    Figure,
    Sim,
    end_child,
    estim_run_args,
    proc_cpu_seconds,
    say,
    spawn,
    wait_rusage,
)

PLANNED_MS = 60_000
IDLE_CHILD = "import estim.cli, time; print('ready', flush=True); time.sleep(3600)"


def session_run(ctx: Context, window: float, full_session: bool) -> dict[str, float]:
    sim = Sim(ctx.workdir, (), tag="cpu")
    host = idle = None
    try:
        port = sim.wait_port()
        with open(ctx.workdir / "cpu-run.out", "wb") as out:
            host = spawn(
                estim_run_args(port, ctx.workdir / "cpu.db"),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=ctx.env(),
            )
        idle = spawn([sys.executable, "-c", IDLE_CHILD], stdout=subprocess.PIPE, env=ctx.env())
        t_spawn = time.monotonic()
        assert idle.stdout is not None
        if (
            not select.select([idle.stdout], [], [], 30)[0]
            or idle.stdout.readline().strip() != b"ready"
        ):
            raise RuntimeError("the idle baseline child did not start")
        idle_t0, idle_c0 = time.monotonic(), proc_cpu_seconds(idle.pid)
        on = sim.wait_for(lambda e: e["kind"] == "output_on", timeout=30)
        host_t0, host_c0 = time.monotonic(), proc_cpu_seconds(host.pid)
        samples: dict[str, float] = {}
        for when, key in sorted([(idle_t0 + window, "idle"), (host_t0 + window, "host")]):
            time.sleep(max(0.0, when - time.monotonic()))
            pid = idle.pid if key == "idle" else host.pid
            samples[key] = proc_cpu_seconds(pid)
        if full_session:
            code, host_total = wait_rusage(host, timeout=PLANNED_MS / 1000 + 30)
        else:
            host.send_signal(signal.SIGINT)
            code, host_total = wait_rusage(host, timeout=15)
        t_end = time.monotonic()
        idle.kill()
        _, idle_total = wait_rusage(idle, timeout=10)
        off = sim.wait_for(lambda e: e["kind"] == "output_off", timeout=10)
        return {
            "window_s": window,
            "steady_host": samples["host"] - host_c0,
            "steady_idle": samples["idle"] - idle_c0,
            "total_host": host_total,
            "total_idle": idle_total,
            "wall_s": t_end - t_spawn,
            "exit": code,
            "delivered_ms": off["delivered_ms"],
            "on_to_off_ms": (off["t"] - on["t"]) * 1000,
            "off_reason": off["reason"],
            "max_gap_ms": off["max_frame_gap_ms"],
        }
    finally:
        for proc in (host, idle):
            if proc is not None:
                end_child(proc, signal.SIGKILL)
        sim.close()


def measure(ctx: Context) -> list[Figure]:
    window = 8.0 if ctx.quick else 58.0
    what = "an 8 s slice of a 60 s session" if ctx.quick else "a whole 60 s session"
    say(f"figures 4-5: CPU of estim run over {what}, beside an idle python child")
    r = session_run(ctx, window, full_session=not ctx.quick)
    ctx.shared["cli_steady_cpu_per_min"] = r["steady_host"] / window * 60
    tick = "/proc/<pid>/stat, 10 ms ticks"
    ctx.notes.append(
        f"cpu: estim run exit {r['exit']}, output_off reason {r['off_reason']!r}, "
        f"whole-process CPU {r['total_host']:.3f} s over {r['wall_s']:.2f} s wall "
        f"(idle baseline child {r['total_idle']:.3f} s), worst frame gap {r['max_gap_ms']} ms"
    )
    figures = [
        Figure(
            "cpu_steady_per_session_min",
            r["steady_host"] / window * 60,
            "s/min",
            r["steady_idle"] / window * 60,
            f"idle 'import estim.cli; sleep' child, same {window:g} s window ({tick})",
            "<= 0.3 s per minute of session",
            r["steady_host"] / window * 60 <= 0.3,
        )
    ]
    minutes = window / 60 if ctx.quick else PLANNED_MS / 60_000
    total = r["total_host"] / minutes
    base = r["total_idle"] / minutes
    if ctx.quick:
        figures.append(
            Figure(
                "cpu_process_per_session_min",
                total,
                "s/min",
                base,
                "idle 'import estim.cli; sleep' child over the same wall time, scaled alike",
                f"info only in --quick: start-up scaled by {60 / window:g}x (full mode: <= 0.3 s/min)",
                None,
            )
        )
        figures.append(
            Figure(
                "dwell_error",
                None,
                "ms",
                PLANNED_MS,
                "planned dwell (SKIPPED in --quick: needs a real-time 60 s session)",
                "|delivered - planned| <= 20 ms",
                None,
            )
        )
    else:
        figures.append(
            Figure(
                "cpu_process_per_session_min",
                total,
                "s/min",
                base,
                "idle 'import estim.cli; sleep' child over the same wall time (wait4)",
                "<= 0.3 s per minute of session (whole process, start-up included)",
                total <= 0.3,
            )
        )
        err = r["delivered_ms"] - PLANNED_MS
        ctx.notes.append(
            f"dwell: output_off.delivered_ms = {r['delivered_ms']}, output_off.t - output_on.t = "
            f"{r['on_to_off_ms']:.3f} ms, reason {r['off_reason']!r}"
        )
        figures.append(
            Figure(
                "dwell_error",
                err,
                "ms",
                PLANNED_MS,
                "planned dwell (delivered_ms from the unit's output_off)",
                "|delivered - planned| <= 20 ms",
                abs(err) <= 20,
            )
        )
    return figures
