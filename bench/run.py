"""estim benchmarks: ``python bench/run.py [--quick]``.

Prints the machine and a table of figures, each beside a baseline measured in the
same run, and writes ``bench/results.json`` (a list of figures) and
``bench/machine.json``. See bench/README.md for what each figure means.

--quick (for CI) finishes in under a minute; the full mode (for releases) takes
about 7 minutes. ``--load K`` makes it a loaded run: K processes spin for the whole
run (each takes a core when it can), and the results go to ``results-loaded.json``. Exit status 0 unless a measurement failed to run (goals not met
are reported in the table, not in the exit status). ``--readme`` measures nothing:
it regenerates the table in the repository's README.md from bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import benchlib
import coldstart
import cpu
import ctrlc
import readme
import roundtrip
import scale
import simcost
import stoplatency
import watchdog
from benchlib import Context, Figure, say

HERE = Path(__file__).resolve().parent

#: (figure numbers, measurement, keep the units for the next section), in the order
#: they run (later ones use earlier results)
SECTIONS: list[tuple[str, Callable[[Context], list[Figure]], bool]] = [
    ("1", roundtrip.measure, True),
    ("2", stoplatency.measure, True),
    ("10", ctrlc.measure, True),
    ("7", roundtrip.measure_baud, True),
    ("7", stoplatency.measure_baud, False),
    ("9", simcost.measure, False),
    ("3", watchdog.measure, False),
    ("4,5", cpu.measure, False),
    ("6", scale.measure, False),
    ("8", coldstart.measure, False),
]


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, int) or abs(x) >= 1000:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.2f}"
    if abs(x) >= 0.01 or x == 0:
        return f"{x:.3f}"
    return f"{x:.2e}"


def table(figures: list[Figure]) -> str:
    head = ["figure", "value", "unit", "baseline", "ratio", "met", "goal", "baseline is"]
    rows = [
        [
            f.name,
            fmt(f.value)
            if f.value is not None
            else "FAILED"
            if f.error
            else "SKIPPED"
            if "SKIPPED" in f.baseline_name
            else "-",
            f.unit,
            fmt(f.baseline),
            fmt(f.ratio),
            {True: "yes", False: "NO", None: "-"}[f.met],
            f.goal,
            f"FAILED: {f.error}" if f.error else f.baseline_name,
        ]
        for f in figures
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    right = {1, 3, 4}

    def line(r: list[str]) -> str:
        cells = [r[i].rjust(w) if i in right else r[i].ljust(w) for i, w in enumerate(widths)]
        return "  ".join([*cells, r[-1]])

    return "\n".join([line(head), line(["-" * w for w in widths] + ["-" * 11]), *map(line, rows)])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI mode: under a minute, fewer repetitions"
    )
    parser.add_argument(
        "--only", metavar="N[,N]", help="run only these figure numbers (e.g. 1,2); for debugging"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directory (logs of every child)"
    )
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="K",
        help="a loaded run: K busy processes (one spinning python each) for the whole run; "
        "writes results-loaded.json and machine-loaded.json",
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="measure nothing: regenerate README.md's table from bench/results.json",
    )
    args = parser.parse_args()
    if args.readme:
        return 0 if readme.update() else 1
    only = set(args.only.split(",")) if args.only else None

    benchlib.install_signal_cleanup()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="estim-bench-"))
    os.environ["ESTIM_HOME"] = str(workdir / "estim-home")
    ctx = Context(quick=args.quick, workdir=workdir)
    machine = benchlib.machine()
    machine["mode"] = "quick" if args.quick else "full"
    print(f"estim bench ({machine['mode']} mode)")
    print(f"machine: {machine['platform']}")
    print(
        f"cpu:     {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"load average at start {machine['loadavg_at_start']}"
    )
    print(
        f"python:  {machine['python']} ({machine['python_executable']}), estim {machine['estim']}"
    )
    sys.stdout.flush()

    machine["background_load"] = args.load
    for _ in range(args.load):
        benchlib.spawn([sys.executable, "-c", "while True: pass"])
    if args.load:
        print(f"load:    {args.load} busy process(es) for the whole run")
    figures: list[Figure] = []
    failed: list[str] = []
    try:
        for numbers, section, keep_units in SECTIONS:
            if only is not None and not only & set(numbers.split(",")):
                continue
            try:
                figures += section(ctx)
            except Exception as err:
                traceback.print_exc()
                failed.append(
                    f"figure {numbers} ({section.__module__}.{section.__name__}): {err!r}"
                )
            if not keep_units:
                ctx.close_units()
    finally:
        ctx.close_units()
        benchlib.cleanup_children()
        if args.keep:
            say(f"scratch directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - started
    machine["runtime_s"] = round(elapsed, 1)
    try:
        machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    print()
    print(table(figures))
    print()
    print("p99 is nearest-rank: with fewer than 100 samples it is the maximum.")
    for note in ctx.notes:
        print(f"note: {note}")
    failed += ctx.failures
    for failure in failed:
        print(f"FAILED to measure: {failure}")
    print(f"runtime {elapsed:.1f} s; load average at end {machine.get('loadavg_at_end')}")

    if only is None:
        suffix = "-loaded" if args.load else ""
        results, machine_file = HERE / f"results{suffix}.json", HERE / f"machine{suffix}.json"
        results.write_text(json.dumps([f.as_json() for f in figures], indent=2) + "\n")
        machine_file.write_text(json.dumps(machine, indent=2) + "\n")
        print(f"wrote {results} and {machine_file}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
