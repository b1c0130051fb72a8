"""Shared helpers for the benchmarks: figures, percentiles, child processes that are
always cleaned up, the simulator as a separate process, CPU time of a process,
and a description of the machine.

Stdlib only (plus estim itself). Every child process is started through
``spawn`` and is killed by ``cleanup_children`` (called from run.py's ``finally``
and at exit), so no simulator, echo process or ``estim run`` outlives the bench.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- figures -------------------------------------------------------------------------


@dataclass
class Figure:
    """One line of results.json: ``value`` beside ``baseline`` (same unit)."""

    name: str
    value: float | None
    unit: str
    baseline: float | None
    baseline_name: str
    goal: str
    met: bool | None

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def as_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "name": self.name,
            "value": _round(self.value),
            "unit": self.unit,
            "baseline": _round(self.baseline),
            "baseline_name": self.baseline_name,
            "ratio": None if ratio is None else round(ratio, 4),
            "goal": self.goal,
            "met": self.met,
        }


def _round(x: float | None) -> float | None:
    if x is None:
        return None
    if x == 0 or not math.isfinite(x):
        return x
    digits = max(0, 6 - math.floor(math.log10(abs(x))) - 1)
    return round(x, digits)


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): with fewer than 100 samples, p99 is the maximum."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(samples: list[float]) -> float:
    ordered = sorted(samples)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def say(text: str) -> None:
    """Progress, on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- child processes -------------------------------------------------------------------

_children: list[subprocess.Popen[bytes]] = []


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child that ``cleanup_children`` will kill if it is still running."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    proc: subprocess.Popen[bytes] = subprocess.Popen(args, **kwargs)
    _children.append(proc)
    return proc


def estim_run_args(port: str, db: Path) -> list[str]:
    """The host process the bench measures: a one-minute session on channel 1."""
    return [
        sys.executable,
        "-m",
        "estim",
        "run",
        "--port",
        port,
        "--dwell",
        "1m",
        "-c",
        "1:2:250:5",
        "--yes",
        "--db",
        str(db),
    ]


def end_child(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Signal one child we started, wait, and kill it if it does not end."""
    if proc.returncode is None and proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    if proc in _children:
        _children.remove(proc)


def cleanup_children() -> None:
    """Kill every child still running (by its own pid, never by name)."""
    for proc in list(_children):
        try:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
        except Exception:
            pass
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except Exception:
                    pass
        if proc in _children:
            _children.remove(proc)


atexit.register(cleanup_children)


def install_signal_cleanup() -> None:
    """SIGTERM and SIGHUP end the bench through SystemExit, so every ``finally`` runs."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def wait_rusage(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Wait for ``proc`` to exit (killing it after ``timeout`` s); return its exit
    status and the CPU seconds (user + system) it used, from wait4()."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc in _children:
        _children.remove(proc)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return proc.returncode, usage.ru_utime + usage.ru_stime


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used so far,
    from /proc/<pid>/stat (resolution 1/CLK_TCK, usually 10 ms)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- the simulator as a separate process ---------------------------------------------------


@dataclass
class Sim:
    """``estim simulate --pty --json OPTIONS`` with its stdout in a file.

    A file rather than a pipe: the simulator never blocks on a full pipe while the
    bench is busy measuring, and reading the log costs the bench nothing while a
    measurement runs. ``port`` is the pseudo-terminal the first line names.
    """

    workdir: Path
    options: tuple[str, ...] = ()
    tag: str = "sim"
    port: str = ""
    proc: subprocess.Popen[bytes] | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0
    _partial: bytes = b""

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.tag}-{os.getpid()}-{id(self)}.jsonl"
        self.err_path = self.log_path.with_suffix(".err")
        with open(self.log_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = spawn(
                [sys.executable, "-m", "estim", "simulate", "--pty", "--json", *self.options],
                stdout=out,
                stderr=err,
            )

    def wait_port(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while not self.port:
            self._read()
            if self.port:
                break
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"simulator gave no PORT line (exit {self.proc.poll()}): "
                    f"{self.err_path.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.005)
        return self.port

    def _read(self) -> None:
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            text = line.decode()
            if not self.port:
                if not text.startswith("PORT "):
                    raise RuntimeError(f"simulator's first line is not PORT: {text!r}")
                self.port = text.split(" ", 1)[1].strip()
            elif text.strip():
                self.entries.append(json.loads(text))

    def log(self) -> list[dict[str, Any]]:
        """Every JSON entry the unit has logged so far."""
        self._read()
        return self.entries

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,
        start: int = 0,
        poll: float = 0.002,
    ) -> dict[str, Any]:
        """The first entry (from index ``start``) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            for entry in self.entries[start:]:
                if predicate(entry):
                    return entry
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.tag}: no matching log entry within {timeout} s; last: {self.entries[-3:]}"
                )
            time.sleep(poll)

    def close(self) -> None:
        if self.proc is not None:
            end_child(self.proc)
        self._read()


def start_sims(workdir: Path, count: int, *options: str, tag: str = "sim") -> list[Sim]:
    """``count`` simulators started together (their start-up overlaps)."""
    sims: list[Sim] = []
    try:
        for i in range(count):
            sims.append(Sim(workdir, tuple(options), tag=f"{tag}{i}"))
        for sim in sims:
            sim.wait_port()
    except BaseException:
        for sim in sims:
            sim.close()
        raise
    return sims


# --- the machine ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    import estim

    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "estim": getattr(estim, "__version__", "?"),
        "loadavg_at_start": [round(x, 2) for x in load],
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@dataclass
class Context:
    """What every measurement gets: the mode, a scratch directory, shared results."""

    quick: bool
    workdir: Path
    seed: int = 20240607
    #: results one measurement leaves for another (e.g. the raw round trip p50 in ms)
    shared: dict[str, Any] = field(default_factory=dict)
    #: observations worth reading, printed under the table
    notes: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Environment for CLI children: ESTIM_HOME in the scratch directory."""
        env = dict(os.environ)
        env["ESTIM_HOME"] = str(self.workdir / "estim-home")
        env.pop("ESTIM_DB", None)
        return env
