"""Shared helpers for the benchmarks: figures, percentiles, child processes that are
always cleaned up, the simulator as a separate process, CPU time of a process,
and a description of the machine.

Stdlib only (plus estim itself). Every child process is started through
``spawn`` and is killed by ``cleanup_children`` (called from run.py's ``finally``
and at exit), so no simulator, echo process or ``estim run`` outlives the bench.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import math
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# --- figures -------------------------------------------------------------------------


@dataclass
class Figure:
    """One line of results.json: ``value`` beside ``baseline`` (same unit).

    ``met`` is None for a figure without a goal of its own (a diagnostic);
    ``headline`` figures (by default every figure with a goal; set it to say
    otherwise) go into the README's table; ``error`` says why a figure could not be measured (its
    value is then None)."""

    name: str
    value: float | None
    unit: str
    baseline: float | None
    baseline_name: str
    goal: str
    met: bool | None
    #: None: in the README's table if it has a goal
    headline: bool | None = None
    error: str | None = None
    #: a short description for the README's table
    title: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def as_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "name": self.name,
            "title": self.title,
            "value": _round(self.value),
            "unit": self.unit,
            "baseline": _round(self.baseline),
            "baseline_name": self.baseline_name,
            "ratio": None if ratio is None else round(ratio, 4),
            "goal": self.goal,
            "met": self.met,
            "headline": self.met is not None if self.headline is None else self.headline,
            "error": self.error,
        }


def failed_figure(name: str, unit: str, goal: str, error: str, title: str = "") -> Figure:
    """A figure that could not be measured (e.g. no C compiler): shown, never silently gone."""
    return Figure(name, None, unit, None, "-", goal, False, True, error, title)


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


def proc_cpu_precise(pid: int) -> float:
    """CPU seconds a live process's threads have run so far, to the nanosecond: the sum
    of ``/proc/<pid>/task/*/schedstat`` (time on a CPU, user and system). Threads that
    ended are not counted (unlike /proc/<pid>/stat), so use it over windows in which
    no thread ends: a running session's threads all live as long as it does. Falls
    back to ``proc_cpu_seconds`` where schedstat is missing."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task"):
                raise ProcessLookupError(pid) from None
        except (OSError, ValueError, IndexError):
            return proc_cpu_seconds(pid)
    return total / 1e9


# --- units in their own processes: the Python simulator and the C reference unit ---------

REFERENCE = Path(__file__).resolve().parent.parent / "firmware_protocol" / "reference"
CUNIT_SOURCES = ("posix_pty.c", "estim_unit.c", "estim_wire.c")
CUNIT_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2")


def build_cunit(outdir: Path) -> Path:
    """Build the C reference unit (firmware_protocol/reference/) with ``cc -O2``, as its
    README says; raises RuntimeError (with the compiler's words) if it cannot."""
    cc = shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (cc) on PATH: the C reference unit cannot be built")
    binary = outdir / "estim-ref-c"
    command = [cc, *CUNIT_FLAGS, "-o", str(binary), *(str(REFERENCE / s) for s in CUNIT_SOURCES)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-1000:]}")
    return binary


@dataclass
class Unit:
    """A unit served on a pty by another process, with its ``--json`` log in a file:
    ``estim simulate --pty --json OPTIONS`` (``kind="sim"``) or the C reference unit
    ``estim-ref-c --json OPTIONS`` (``kind="cunit"``, ``binary`` its path).

    A file rather than a pipe: the unit never blocks on a full pipe while the bench
    is busy measuring, and reading the log costs the bench nothing while a
    measurement runs. ``port`` is the pseudo-terminal the first line names.
    """

    workdir: Path
    options: tuple[str, ...] = ()
    tag: str = "sim"
    kind: str = "sim"
    binary: Path | None = None
    port: str = ""
    proc: subprocess.Popen[bytes] | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0
    _partial: bytes = b""

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.tag}-{os.getpid()}-{id(self)}.jsonl"
        self.err_path = self.log_path.with_suffix(".err")
        if self.kind == "sim":
            args = [sys.executable, "-m", "estim", "simulate", "--pty", "--json", *self.options]
        elif self.kind == "cunit":
            assert self.binary is not None, "the C unit needs its binary"
            args = [str(self.binary), "--json", *self.options]
        else:
            raise ValueError(f"unknown unit kind {self.kind!r}")
        with open(self.log_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = spawn(args, stdout=out, stderr=err)

    @property
    def label(self) -> str:
        return {"sim": "Python simulator", "cunit": "C reference unit"}[self.kind]

    def wait_port(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while not self.port:
            self._read()
            if self.port:
                break
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.tag}: no PORT line (exit {self.proc.poll()}): "
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
                    raise RuntimeError(f"{self.tag}: the first line is not PORT: {text!r}")
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


#: the old name
Sim = Unit


def start_units(
    workdir: Path,
    count: int,
    *options: str,
    tag: str = "sim",
    kind: str = "sim",
    binary: Path | None = None,
) -> list[Unit]:
    """``count`` units started together (their start-up overlaps)."""
    units: list[Unit] = []
    try:
        for i in range(count):
            units.append(Unit(workdir, tuple(options), tag=f"{tag}{i}", kind=kind, binary=binary))
        for unit in units:
            unit.wait_port()
    except BaseException:
        for unit in units:
            unit.close()
        raise
    return units


def start_sims(workdir: Path, count: int, *options: str, tag: str = "sim") -> list[Unit]:
    return start_units(workdir, count, *options, tag=tag, kind="sim")


# --- the raw echo: the floor of any round trip over a pty -------------------------------

#: holds a pty's master (as the units do), prints ``PORT <slave>``, then answers every
#: frame (every 0x00 it reads) with the fixed reply in argv[1]
ECHO_CHILD = r"""
import os, sys, tty
master, slave = os.openpty()
tty.setraw(slave)
print("PORT " + os.ttyname(slave), flush=True)
reply = bytes.fromhex(sys.argv[1])
while True:
    data = os.read(master, 4096)
    if not data:
        break
    for _ in range(data.count(0)):
        os.write(master, reply)
"""


def start_echo(reply: bytes) -> tuple[subprocess.Popen[bytes], str]:
    proc = spawn([sys.executable, "-c", ECHO_CHILD, reply.hex()], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20.0)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("PORT /dev/"):
        end_child(proc)
        raise RuntimeError(f"the echo child printed {line!r}")
    return proc, line.split(" ", 1)[1]


def open_raw(port: str) -> int:
    """The host end of a pty, raw, for os.write/os.read."""
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return fd


# --- asyncio, on a loop thread of its own --------------------------------------------------


class LoopThread:
    """An asyncio loop on its own thread: ``run(coro)`` runs a coroutine there and
    returns its result. The asyncio runner's lanes time themselves inside the loop
    (``time.perf_counter`` around each ``await``), so the hand-over of a whole block
    to the loop is never part of a sample."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-loop", daemon=True)
        self.thread.start()

    def run(self, awaitable: Awaitable[T], timeout: float | None = 600.0) -> T:
        async def main() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(main(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    """What every measurement gets: the mode, a scratch directory, shared results,
    and the units (processes) that several measurements share."""

    quick: bool
    workdir: Path
    seed: int = 20240607
    #: results one measurement leaves for another (e.g. the raw round trip p50 in ms)
    shared: dict[str, Any] = field(default_factory=dict)
    #: observations worth reading, printed under the table
    notes: list[str] = field(default_factory=list)
    #: figures that could not be measured (the run goes on; the exit status is 1)
    failures: list[str] = field(default_factory=list)
    _units: dict[str, Unit] = field(default_factory=dict)
    _cunit: Path | None = None
    _cunit_error: str | None = None

    def env(self) -> dict[str, str]:
        """Environment for CLI children: ESTIM_HOME in the scratch directory."""
        env = dict(os.environ)
        env["ESTIM_HOME"] = str(self.workdir / "estim-home")
        env.pop("ESTIM_DB", None)
        return env

    def cunit_binary(self) -> Path:
        """The C reference unit, built once per run into the scratch directory;
        RuntimeError (the same one every time) if it cannot be built."""
        if self._cunit is None and self._cunit_error is None:
            try:
                self._cunit = build_cunit(self.workdir)
            except (RuntimeError, OSError) as err:
                self._cunit_error = str(err)
                self.failures.append(f"the C reference unit: {err}")
        if self._cunit is None:
            raise RuntimeError(self._cunit_error)
        return self._cunit

    def cunit_error(self) -> str | None:
        try:
            self.cunit_binary()
        except RuntimeError as err:
            return str(err)
        return None

    def units(self, wanted: list[tuple[str, str, tuple[str, ...]]]) -> dict[str, Unit]:
        """Units by name, started on first use (all that are new at once, so their
        start-up overlaps) and kept until ``close_units``: ``(name, kind, options)``
        with kind "sim" or "cunit". C units are left out if cc is missing."""
        new = []
        for name, kind, options in wanted:
            if name in self._units:
                continue
            if kind == "cunit" and self.cunit_error() is not None:
                continue
            binary = self.cunit_binary() if kind == "cunit" else None
            unit = Unit(self.workdir, options, tag=name, kind=kind, binary=binary)
            self._units[name] = unit
            new.append(unit)
        for unit in new:
            unit.wait_port()
        return {name: self._units[name] for name, _, _ in wanted if name in self._units}

    def close_units(self) -> None:
        for unit in self._units.values():
            unit.close()
        self._units.clear()
