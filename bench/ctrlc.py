"""Figure 10: Ctrl-C in a terminal to the C unit's output off.

For each sample a host program runs on a pseudo-terminal of its own, as its
controlling terminal (a new session; 24 x 80), exactly as a clinician's terminal
holds it, with a one-minute session on the C reference unit:

- threaded: ``estim run --port PTY --dwell 1m -c 1:2:250:5 --yes --db TMP`` (the CLI,
  its live view drawn on that terminal);
- asyncio: ``python bench/aio_run.py`` (the same plan on ``estim.aio``; Ctrl-C is
  ``loop.add_signal_handler`` calling ``request_stop``);
- bare (the floor): ``python bench/bare_loop.py --session ID`` (figure 5's floor), whose
  SIGINT handler writes a pre-encoded STOP itself: what a Python process on a
  terminal takes from the key to its STOP reaching the unit, with no driver.

Once the unit logs ``output_on`` and a further 0.1-0.2 s has passed (seeded random,
so the key falls anywhere between two heartbeats), the bench writes the Ctrl-C byte
(0x03) to the terminal's master side: the kernel's line discipline sends SIGINT to
the program, as a key press does. The latency is the unit's own ``output_off`` time
``t`` (its ``--json`` log, CLOCK_MONOTONIC) minus the bench's ``time.monotonic()``
just before the write. The lanes alternate, one program at a time, on one unit.

Baseline: the bare lane's p99, same run.
"""

from __future__ import annotations

import fcntl
import os
import pty
import random
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from benchlib import (
    Context,
    Figure,
    end_child,
    estim_run_args,
    failed_figure,
    percentile,
    say,
    spawn,
)

AIO_RUN = Path(__file__).resolve().parent / "aio_run.py"
GOAL = "p99 < 1 ms"
LANES = ("threaded", "asyncio")
BARE_LOOP = Path(__file__).resolve().parent / "bare_loop.py"


def _own_terminal() -> None:
    """In the child: a session of its own, with stdin (the pty) as its controlling tty."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A program on a pseudo-terminal; everything it draws is read and kept (the tail)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.proc = spawn(
            args, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_own_terminal, env=env
        )
        os.close(slave)
        self.shown = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the program and its terminal are gone
                return
            if not data:
                return
            self.shown += data
            del self.shown[:-4000]

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    def close(self) -> int | None:
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            code = None
        end_child(self.proc)
        self._reader.join(timeout=5)
        os.close(self.master)
        return code

    def tail(self) -> str:
        return self.shown.decode(errors="replace")[-300:].replace("\n", " | ")


def measure(ctx: Context) -> list[Figure]:
    count = 4 if ctx.quick else 100
    error = ctx.cunit_error()
    if error:
        return [
            failed_figure(f"ctrlc_{lane}_cunit_p99", "ms", GOAL, error, "Ctrl-C, C unit")
            for lane in LANES
        ]
    unit = ctx.units([("ctrlc", "cunit", ())])["ctrlc"]
    say(f"figure 10: Ctrl-C on a terminal to the C unit's output off, {count} per lane")
    rng = random.Random(ctx.seed + 10)
    latencies: dict[str, list[float]] = {lane: [] for lane in LANES}
    db = ctx.workdir / "ctrlc.db"
    lanes = (*LANES, "bare")
    latencies["bare"] = []
    for i in range(count * len(lanes)):
        lane = lanes[i % len(lanes)]
        start = len(unit.log())
        last = max((e.get("session_id", 0) for e in unit.entries), default=0)
        args = {
            "threaded": estim_run_args(unit.port, db),
            "asyncio": [sys.executable, str(AIO_RUN), "--port", unit.port, "--db", str(db)],
            "bare": [
                sys.executable,
                str(BARE_LOOP),
                "--port",
                unit.port,
                "--session",
                str(last + 1),
            ],
        }[lane]
        term = Terminal(args, ctx.env())
        problem = ""
        try:
            unit.wait_for(lambda e: e["kind"] == "output_on", timeout=30, start=start)
            time.sleep(rng.uniform(0.1, 0.2))
            asked = time.monotonic()
            term.ctrl_c()
            off = unit.wait_for(lambda e: e["kind"] == "output_off", timeout=5, start=start)
            if off["reason"] == "stop":
                latencies[lane].append((off["t"] - asked) * 1000)
            else:
                problem = f"output off by {off['reason']!r}"
        except TimeoutError as err:
            problem = str(err)
        code = term.close()
        if code is None:
            problem = problem or "the program did not exit within 15 s of Ctrl-C"
        if problem:
            ctx.notes.append(f"Ctrl-C {lane}: {problem}; the terminal showed: {term.tail()}")
    bare = percentile(latencies["bare"], 99) if latencies["bare"] else None
    floor = (
        f"bare_loop.py's STOP from its SIGINT handler, same run, p99 (n={len(latencies['bare'])})"
    )
    figures = []
    for lane in LANES:
        samples = latencies[lane]
        n = f"n={len(samples)}" + ("" if len(samples) >= 100 else ": p99 is the maximum")
        p99 = percentile(samples, 99) if samples else None
        figures.append(
            Figure(
                f"ctrlc_{lane}_cunit_p99",
                p99,
                "ms",
                bare,
                f"{floor}; Ctrl-C {n}",
                GOAL,
                None if p99 is None else p99 < 1.0,
                error=None if samples else "no sample",
                title=f"Ctrl-C on the terminal to the C unit's output off, {lane}"
                f" ({'estim run' if lane == 'threaded' else 'bench/aio_run.py'}), p99",
            )
        )
        if samples:
            figures.append(
                Figure(
                    f"ctrlc_{lane}_cunit_p50",
                    percentile(samples, 50),
                    "ms",
                    None if not latencies["bare"] else percentile(latencies["bare"], 50),
                    f"the same floor, p50; Ctrl-C {n}",
                    "(p99 is the goal)",
                    None,
                    title=f"Ctrl-C on the terminal to the C unit's output off, {lane}, p50",
                )
            )
    return figures
