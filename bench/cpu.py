"""Figures 4 and 5: dwell accuracy of a real-time session, and the host's CPU, for
both runners.

Three host children run one session each, at the same time, each on a C reference
unit of its own (the Python simulator if the C unit cannot be built; a note says so):

- threaded: ``estim run --port PTY --dwell 1m -c 1:2:250:5 --yes --db TMP``;
- asyncio: ``python bench/aio_run.py --port PTY --db TMP`` (the same plan on
  ``estim.aio``, one line per event on stdout, as ``estim run`` prints);
- the floor: ``python bench/bare_loop.py --port PTY``, the same frames (a HEARTBEAT
  every 100 ms, a GET_STATUS every second) pre-encoded and written by one bare
  thread that reads the answers without decoding them: what waking up, writing and
  reading costs a Python process on this machine, with no driver at all.

Beside them, started at the same instant and killed the instant the last exits,
runs an idle ``python -c "import estim.cli, estim.aio, time; time.sleep(...)"``
(the baseline of the whole-process figures: the imports).

- Steady CPU: ``/proc/<pid>/task/*/schedstat`` (time on a CPU, every thread, in ns)
  sampled when the unit logs ``output_on`` and again W seconds later, scaled to one
  minute; the floor is sampled the same way (its baseline).
- Whole-process CPU: ``os.wait4`` of the child (start-up, imports and shutdown
  included), per minute of session. Full mode runs the whole 60 s session (W = 58 s;
  the same run gives figure 4). Quick mode SIGINTs the sessions W = 8 s after output
  starts and scales to per-minute, which multiplies the start-up cost by 7.5: that
  figure is then only informative.
- Figure 4 (full mode only): the unit's ``output_off.delivered_ms`` minus the planned
  60,000 ms.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import (
    Context,
    Figure,
    end_child,
    estim_run_args,
    proc_cpu_precise,
    say,
    spawn,
    wait_rusage,
)

PLANNED_MS = 60_000
GOAL = 0.1
IDLE_CHILD = "import estim.cli, estim.aio, time; print('ready', flush=True); time.sleep(3600)"
AIO_RUN = Path(__file__).resolve().parent / "aio_run.py"
BARE_LOOP = Path(__file__).resolve().parent / "bare_loop.py"
RUNNERS = ("threaded", "asyncio")
#: "sim": ``estim run`` again, on the Python simulator (``estim simulate --pty``), for
#: the simulator's CPU per heartbeat beside the C unit's under the same host
HOSTS = (*RUNNERS, "bare", "sim")
SIM_GOAL = 2.0
#: issue 20: a runner's steady CPU within this many times the bare loop's
BARE_RATIO = 1.5


def session_run(ctx: Context, window: float, full_session: bool) -> dict[str, Any]:
    kind = "cunit" if ctx.cunit_error() is None else "sim"
    if kind == "sim":
        ctx.notes.append("cpu: the C unit could not be built; the sessions ran on the simulator")
    units = ctx.units([(f"cpu-{r}", "sim" if r == "sim" else kind, ()) for r in HOSTS])
    hosts: dict[str, subprocess.Popen[bytes]] = {}
    idle = None
    try:
        for runner in HOSTS:
            port = units[f"cpu-{runner}"].port
            db = ctx.workdir / f"cpu-{runner}.db"
            args = {
                "threaded": estim_run_args(port, db),
                "sim": estim_run_args(port, db),
                "asyncio": [sys.executable, str(AIO_RUN), "--port", port, "--db", str(db)],
                "bare": [sys.executable, str(BARE_LOOP), "--port", port],
            }[runner]
            with open(ctx.workdir / f"cpu-{runner}.out", "wb") as out:
                hosts[runner] = spawn(args, stdout=out, stderr=subprocess.STDOUT, env=ctx.env())
        idle = spawn([sys.executable, "-c", IDLE_CHILD], stdout=subprocess.PIPE, env=ctx.env())
        t_spawn = time.monotonic()
        assert idle.stdout is not None
        if (
            not select.select([idle.stdout], [], [], 30)[0]
            or idle.stdout.readline().strip() != b"ready"
        ):
            raise RuntimeError("the idle baseline child did not start")
        t0 = {"idle": time.monotonic()}
        c0 = {"idle": proc_cpu_precise(idle.pid)}
        ons = {}
        pids: dict[str, int] = {}
        for runner in HOSTS:
            ons[runner] = units[f"cpu-{runner}"].wait_for(
                lambda e: e["kind"] == "output_on", timeout=30
            )
            t0[runner], c0[runner] = time.monotonic(), proc_cpu_precise(hosts[runner].pid)
            if kind == "cunit" and runner in ("threaded", "sim"):  # two units, one host program
                unit = units[f"cpu-{runner}"]
                assert unit.proc is not None
                key = f"unit-{unit.kind}"
                pids[key], t0[key] = unit.proc.pid, t0[runner]
                c0[key] = proc_cpu_precise(unit.proc.pid)
        pids.update({"idle": idle.pid, **{r: hosts[r].pid for r in HOSTS}})
        steady: dict[str, float] = {}
        for when, key in sorted((t + window, key) for key, t in t0.items()):
            time.sleep(max(0.0, when - time.monotonic()))
            steady[key] = proc_cpu_precise(pids[key]) - c0[key]
        totals: dict[str, float] = {}
        codes: dict[str, int] = {}
        for runner in HOSTS:
            if full_session:
                codes[runner], totals[runner] = wait_rusage(
                    hosts[runner], timeout=PLANNED_MS / 1000 + 30
                )
            else:
                hosts[runner].send_signal(signal.SIGINT)
        if not full_session:
            for runner in HOSTS:
                codes[runner], totals[runner] = wait_rusage(hosts[runner], timeout=15)
        t_end = time.monotonic()
        idle.kill()
        _, totals["idle"] = wait_rusage(idle, timeout=10)
        offs = {
            r: units[f"cpu-{r}"].wait_for(lambda e: e["kind"] == "output_off", timeout=10)
            for r in HOSTS
        }
        return {
            "kind": kind,
            "window_s": window,
            "steady": steady,
            "totals": totals,
            "codes": codes,
            "wall_s": t_end - t_spawn,
            "on": ons,
            "off": offs,
        }
    finally:
        for proc in [*hosts.values(), idle]:
            if proc is not None:
                end_child(proc, signal.SIGKILL)


def measure(ctx: Context) -> list[Figure]:
    window = 8.0 if ctx.quick else 58.0
    what = "an 8 s slice of a 60 s session" if ctx.quick else "a whole 60 s session"
    say(f"figures 4-5: CPU of one session per runner over {what}, beside an idle python child")
    r = session_run(ctx, window, full_session=not ctx.quick)
    peer = {"cunit": "the C unit", "sim": "the Python simulator"}[r["kind"]]
    tick = "/proc/<pid>/task/*/schedstat"
    bare_steady = r["steady"]["bare"] / window * 60
    ctx.notes.append(
        f"cpu: the bare python loop (bench/bare_loop.py: the same frames, pre-encoded, one "
        f"thread, no estim) used {bare_steady:.3f} s per minute "
        f"({1e6 * r['steady']['bare'] / (window * 10):.0f} us per 100 ms heartbeat period); an "
        f"idle 'import estim.cli, estim.aio; sleep' child {r['steady']['idle'] / window * 60:.3f} s"
    )
    figures: list[Figure] = []
    for runner in RUNNERS:
        short = "aio" if runner == "asyncio" else runner
        host = "estim run" if runner == "threaded" else "bench/aio_run.py"
        steady = r["steady"][runner] / window * 60
        ctx.shared[f"{short}_steady_cpu_per_min"] = steady
        off = r["off"][runner]
        ctx.notes.append(
            f"cpu {runner} ({host} on {peer}): exit {r['codes'][runner]}, output_off reason "
            f"{off['reason']!r}, whole-process CPU {r['totals'][runner]:.3f} s over "
            f"{r['wall_s']:.2f} s wall (idle child {r['totals']['idle']:.3f} s); steady "
            f"{1e6 * r['steady'][runner] / (window * 10):.0f} us of CPU per 100 ms heartbeat "
            "period (heartbeat + its share of the 1 s status poll)"
        )
        figures.append(
            Figure(
                f"cpu_steady_{short}_per_session_min",
                steady,
                "s/min",
                bare_steady,
                f"the same traffic from a bare python loop (bench/bare_loop.py), same {window:g} s "
                f"window ({tick})",
                f"<= {BARE_RATIO:g}x the bare loop, and <= {GOAL:g} s per minute of session",
                steady <= GOAL and steady <= BARE_RATIO * bare_steady,
                title=f"host CPU per minute of session, {runner} ({host})",
            )
        )
        minutes = window / 60 if ctx.quick else PLANNED_MS / 60_000
        total = r["totals"][runner] / minutes
        base = r["totals"]["idle"] / minutes
        figures.append(
            Figure(
                f"cpu_process_{short}_per_session_min",
                total,
                "s/min",
                base,
                "idle 'import estim.cli, estim.aio; sleep' child over the same wall time (wait4)"
                + (", scaled alike" if ctx.quick else ""),
                f"info: start-up and imports included{' and scaled by 7.5x in --quick' if ctx.quick else ''}",
                None,
                headline=not ctx.quick,
                title=f"whole-process CPU per minute of session, {runner} (start-up included)",
            )
        )
        if ctx.quick:
            figures.append(
                Figure(
                    f"dwell_error_{short}",
                    None,
                    "ms",
                    PLANNED_MS,
                    "planned dwell (SKIPPED in --quick: needs a real-time 60 s session)",
                    "|delivered - planned| <= 20 ms",
                    None,
                    title=f"dwell error, one real-time 60 s session, {runner}",
                )
            )
        else:
            err = off["delivered_ms"] - PLANNED_MS
            ctx.notes.append(
                f"dwell {runner}: output_off.delivered_ms = {off['delivered_ms']}, "
                f"output_off.t - output_on.t = {(off['t'] - r['on'][runner]['t']) * 1000:.3f} ms, "
                f"reason {off['reason']!r}"
            )
            figures.append(
                Figure(
                    f"dwell_error_{short}",
                    err,
                    "ms",
                    PLANNED_MS,
                    f"planned dwell (delivered_ms from {peer}'s output_off)",
                    "|delivered - planned| <= 20 ms",
                    abs(err) <= 20,
                    title=f"dwell error, one real-time 60 s session, {runner}",
                )
            )
    if "unit-sim" in r["steady"]:
        per_beat = {k: 1e6 * r["steady"][f"unit-{k}"] / (window * 10) for k in ("sim", "cunit")}
        off = r["off"]["sim"]
        ctx.notes.append(
            f"cpu sim (estim run on estim simulate --pty): exit {r['codes']['sim']}, "
            f"output_off reason {off['reason']!r}; host steady "
            f"{1e6 * r['steady']['sim'] / (window * 10):.0f} us per heartbeat period"
        )
        figures.append(
            Figure(
                "sim_process_cpu_per_heartbeat_vs_cunit",
                per_beat["sim"],
                "us",
                per_beat["cunit"],
                f"the C unit's process under the same host program (estim run), same {window:g} s "
                f"window ({tick}), per 100 ms heartbeat period",
                f"<= {SIM_GOAL:g}x the C unit",
                per_beat["sim"] <= SIM_GOAL * per_beat["cunit"],
                title="Python simulator process (estim simulate --pty): CPU per heartbeat period",
            )
        )
    return figures
