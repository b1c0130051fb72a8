"""``estim conformance`` on a machine under full CPU load: false failures.

    python bench/conformance_load.py [RUNS] [--no-load]   # 20 runs by default

Starts two busy processes per core, then runs the whole suite RUNS times in a row
against each correct unit: the Python simulator (``estim simulate --pty``) and the
C reference unit (built with the sanitizers, as the tests build it), each at a 2 s
smallest dwell with both lead-off rigs (channel 2 open, channel 1 opening 3 s into
a session) and a clock that wraps at 2^32 during the run; the suite as a vendor
runs it, ``estim conformance --port PTY --test-load --json --open-channel 2
--lead-off-at 3:1``, in its own process. Every run must exit 0: any other exit is
a false failure, printed with the rows that failed. Writes
``bench/conformance_load.json``. Not a test: it loads the whole machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REFERENCE = HERE.parent / "firmware_protocol" / "reference"
UNIT_OPTIONS = ("dwell_min_s=2", "open_channel=2", "lead_off_at=3:1", "clock_start_ms=4294963296")
SUITE_OPTIONS = ("--test-load", "--json", "--open-channel", "2", "--lead-off-at", "3:1")
SANITIZE = "-std=c99 -Wall -Wextra -Werror -pedantic -g -O1 -fsanitize=address,undefined "
SANITIZE += "-fno-sanitize-recover=all -fno-omit-frame-pointer"


def build_c(out: Path) -> Path:
    binary = out / "estim-ref-c"
    sources = [str(REFERENCE / s) for s in ("posix_pty.c", "estim_unit.c", "estim_wire.c")]
    subprocess.run(["cc", *SANITIZE.split(), "-o", str(binary), *sources], check=True)
    return binary


def busy(n: int) -> list[subprocess.Popen[bytes]]:
    """``n`` processes that spin forever (killed by their pid at the end)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def one_run(unit_command: list[str]) -> dict[str, Any]:
    unit = subprocess.Popen(
        [*unit_command, *UNIT_OPTIONS], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert unit.stdout is not None
        first = unit.stdout.readline().decode()
        assert first.startswith("PORT "), first
        port = first.split(" ", 1)[1].strip()
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "estim", "conformance", "--port", port, *SUITE_OPTIONS],
            capture_output=True,
            check=False,
        )
        took = time.monotonic() - began
    finally:
        unit.terminate()
        unit.communicate(timeout=30)
    try:
        document = json.loads(done.stdout)
    except json.JSONDecodeError:
        document = {"rows": []}
    failed = [f"{r['rule']}: {r['seen']}" for r in document["rows"] if r["result"] == "FAIL"]
    skipped = [f"{r['rule']}: {r['seen']}" for r in document["rows"] if r["result"] == "SKIP"]
    return {
        "exit_code": done.returncode,
        "seconds": round(took, 1),
        "failed": failed,
        "skipped": skipped,
        "stderr": done.stderr.decode()[-500:],
    }


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--no-load"]
    runs = int(args[0]) if args else 20
    cores = os.cpu_count() or 1
    spinners = 0 if "--no-load" in sys.argv else 2 * cores
    with tempfile.TemporaryDirectory() as tmp:
        units = {
            "Python simulator": [sys.executable, "-m", "estim", "simulate", "--pty", "-q"],
            "C reference unit": [str(build_c(Path(tmp))), "-q"],
        }
        load = busy(spinners)
        began = time.time()
        results: dict[str, list[dict[str, Any]]] = {}
        try:
            for name, command in units.items():
                results[name] = []
                for i in range(runs):
                    result = one_run(command)
                    results[name].append(result)
                    verdict = "ok" if result["exit_code"] == 0 else "FALSE FAILURE"
                    print(
                        f"{name} run {i + 1}/{runs}: exit {result['exit_code']} in {result['seconds']} s {verdict}",
                        flush=True,
                    )
                    for line in result["failed"] + result["skipped"]:
                        print(f"    {line}", flush=True)
        finally:
            for p in load:
                p.kill()
                p.wait()
    summary = {
        "machine": f"{platform.platform()}, {cores} cores",
        "load": f"{spinners} busy processes ({spinners // cores} per core) beside the suite",
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(began)),
        "runs": runs,
        "units": {
            name: {
                "false_failures": sum(1 for r in rs if r["exit_code"] != 0),
                "skipped_rows": sum(len(r["skipped"]) for r in rs),
                "seconds_per_run": round(sum(r["seconds"] for r in rs) / len(rs), 1),
                "runs": rs,
            }
            for name, rs in results.items()
        },
    }
    if spinners:  # a quiet try is not the figure
        (HERE / "conformance_load.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, unit in summary["units"].items():
        print(
            f"{name}: {unit['false_failures']} false failures in {runs} runs, "
            f"{unit['skipped_rows']} rows skipped, {unit['seconds_per_run']} s a run"
        )
    return 0 if all(u["false_failures"] == 0 for u in summary["units"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
