"""Figure 8: ``estim --help`` cold start beside ``python -c "import click"``.

Both are run as ``[sys.executable, ...]`` (``python -m estim --help``, not the
installed ``estim`` script, so both start the same interpreter the same way),
alternately, and timed from ``subprocess.run`` call to return. Median of 10 runs
each (5 with --quick), after one unmeasured run of each to warm the page cache.
"""

from __future__ import annotations

import subprocess
import sys
import time

from benchlib import Context, Figure, median, say

ESTIM = [sys.executable, "-m", "estim", "--help"]
CLICK = [sys.executable, "-c", "import click"]


def run_once(args: list[str], ctx: Context) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ctx.env(), timeout=60
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{args} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def measure(ctx: Context) -> list[Figure]:
    runs = 5 if ctx.quick else 10
    say(f"figure 8: cold start, {runs} runs each")
    run_once(ESTIM, ctx)
    run_once(CLICK, ctx)
    estim_t: list[float] = []
    click_t: list[float] = []
    for _ in range(runs):
        estim_t.append(run_once(ESTIM, ctx))
        click_t.append(run_once(CLICK, ctx))
    value, base = median(estim_t) * 1000, median(click_t) * 1000
    return [
        Figure(
            "cold_start_help",
            value,
            "ms",
            base,
            f"python -c 'import click', median of {runs}",
            "within 2x (python -m estim --help)",
            value <= 2 * base,
            title="`estim --help` cold start (python -m estim --help)",
        )
    ]
