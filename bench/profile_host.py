"""Where the host spends a round trip and a heartbeat cycle (input for whoever
optimises src; bench/PROFILE.md has the findings). Not part of ``run.py``.

    python bench/profile_host.py [--n 3000] [--seconds 10] [--top 18]

Against the C reference unit (built into a temporary directory), so the unit's own
cost is next to nothing, for both runners:

1. a GET_STATUS round trip, timed at each hand-over with ``time.perf_counter``
   (the driver's own methods are wrapped on the instance, in this process only:
   nothing under src/ changes): before the write, the write, the wait until the
   reader has the answer, decoding, waking the caller, the caller's return;
2. the same round trips under cProfile, on every thread that takes part, ranked
   by own time (cProfile slows everything down several times: read the ranking,
   and the timeline for absolute numbers);
3. a live session for ``--seconds`` s (heartbeat every 100 ms, status every 1 s):
   CPU of each thread from ``/proc/self/task/<tid>/schedstat`` (no profiler
   running), then the same session under cProfile, per heartbeat period.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import LoopThread, Unit, build_cunit, cleanup_children
from roundtrip import RawLane

import estim.aio
from estim.aio import AsyncDevice
from estim.device import Device, connect
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.protocol import Stop, StopReason, encode

STOP_WIRE = encode(Stop(seq=1, reason=int(StopReason.OPERATOR)))
PLAN = SessionPlan(
    dwell=60,
    ramp=5,
    channels=[ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)],
)


def us(x: float) -> str:
    return f"{x * 1e6:7.1f} us"


# --- 1. the timeline of one round trip -----------------------------------------------------


class Stamps:
    """perf_counter stamps of the current round trip, by name (the last one wins)."""

    def __init__(self) -> None:
        self.now: dict[str, float] = {}
        self.rows: list[dict[str, float]] = []

    def mark(self, name: str) -> None:
        self.now[name] = time.perf_counter()

    def wrap(
        self, fn: Callable[..., Any], before: str, after: str, *, first: bool = False
    ) -> Callable[..., Any]:
        """Stamp ``before`` and ``after`` each call (only the first call's, with ``first``)."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if first and before in self.now:
                return fn(*args, **kwargs)
            self.mark(before)
            try:
                return fn(*args, **kwargs)
            finally:
                self.mark(after)

        return wrapped

    def wrap_reader(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """The port reader: mark only a read that returned bytes."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            if result[0]:
                self.mark("read_returned")
            return result

        return wrapped

    def row(self) -> None:
        self.rows.append(dict(self.now))
        self.now.clear()


def report_timeline(title: str, stamps: Stamps, steps: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}: medians of {len(stamps.rows)} round trips")
    total = statistics.median(r["returned"] - r["call"] for r in stamps.rows)
    for label, a, b in steps:
        values = [r[b] - r[a] for r in stamps.rows if a in r and b in r]
        if values:
            print(f"  {us(statistics.median(values))}  {label}")
    print(f"  {us(total)}  whole round trip (call to return)")


def timeline_threaded(port: str, n: int) -> None:
    stamps = Stamps()
    device = connect(port)
    try:
        device._read = stamps.wrap_reader(device._read)  # type: ignore[method-assign]
        device.port.write = stamps.wrap(device.port.write, "write", "written")  # type: ignore[method-assign]
        core = device._core
        core.receive = stamps.wrap(core.receive, "receive", "received")  # type: ignore[method-assign]
        device._carry_out = stamps.wrap(device._carry_out, "carry", "carried")  # type: ignore[method-assign]
        wakes = Counter()
        device.port.cancel_read = wakes.wrap(device.port.cancel_read)  # type: ignore[method-assign]
        for _ in range(200):
            device.status()
        stamps.rows.clear()
        stamps.now.clear()
        for _ in range(n):
            stamps.now.clear()
            stamps.mark("call")
            device.status()
            stamps.mark("returned")
            stamps.row()
        woken = wakes.n
    finally:
        device.close()
    report_timeline(
        "threaded runner, device.status() to the C unit",
        stamps,
        [
            (
                "call -> write starts (caller: lock, waiter Event, core.request: seq, encode)",
                "call",
                "write",
            ),
            ("port.write (pyserial Serial.write)", "write", "written"),
            (
                "write done -> the I/O thread's read returns (pty, unit, wake-up of the I/O thread)",
                "written",
                "read_returned",
            ),
            ("read returned -> core.receive starts (lock)", "read_returned", "receive"),
            ("core.receive (decode, match the answer)", "receive", "received"),
            ("core.tick + take + _carry_out (resolve: Event.set)", "received", "carried"),
            (
                "I/O thread done -> the caller returns (wake-up of the caller, UnitStatus)",
                "carried",
                "returned",
            ),
        ],
    )
    print(
        f"  cancel_read (an extra wake-up of the I/O thread) per round trip: {woken / (n + 200):.2f}"
    )


def timeline_asyncio(port: str, n: int) -> None:
    stamps = Stamps()
    loop = LoopThread()
    try:
        device: AsyncDevice = loop.run(estim.aio.connect(port))
        device._read = stamps.wrap_reader(device._read)  # type: ignore[method-assign]
        device.port.write = stamps.wrap(device.port.write, "write", "written")  # type: ignore[method-assign]
        device._received = stamps.wrap(device._received, "on_loop", "received")  # type: ignore[method-assign]
        core = device._core
        core.receive = stamps.wrap(core.receive, "receive", "decoded")  # type: ignore[method-assign]

        async def rounds(count: int, keep: bool) -> None:
            for _ in range(count):
                stamps.now.clear()
                stamps.mark("call")
                await device.status()
                stamps.mark("returned")
                if keep:
                    stamps.row()

        loop.run(rounds(200, False))
        loop.run(rounds(n, True))
        loop.run(device.close())
    finally:
        loop.close()
    report_timeline(
        "asyncio runner, await unit.status() to the C unit",
        stamps,
        [
            ("call -> write starts (future, core.request: seq, encode)", "call", "write"),
            ("port.write (pyserial Serial.write)", "write", "written"),
            (
                "write done -> the reader thread's read returns (pty, unit, wake-up)",
                "written",
                "read_returned",
            ),
            (
                "read returned -> the loop runs _received (call_soon_threadsafe hand-over)",
                "read_returned",
                "on_loop",
            ),
            ("core.receive (decode, match)", "receive", "decoded"),
            ("core.tick + _carry_out + _schedule (set_result)", "decoded", "received"),
            (
                "_received done -> the awaiting coroutine returns (loop turn, UnitStatus)",
                "received",
                "returned",
            ),
        ],
    )


# --- 2. cProfile of every thread that takes part ------------------------------------------------


class ThreadProfiles:
    """cProfile on threads the driver starts: its run methods are wrapped (class level,
    this process only) before ``connect``."""

    def __init__(self) -> None:
        self.profiles: dict[str, cProfile.Profile] = {}
        self._saved: list[tuple[type, str, Any]] = []

    def patch(self, cls: type, name: str, label: str) -> None:
        original = getattr(cls, name)
        profiles = self.profiles

        def run(self_: Any, *args: Any, **kwargs: Any) -> Any:
            profile = profiles.setdefault(label, cProfile.Profile())
            profile.enable()
            try:
                return original(self_, *args, **kwargs)
            finally:
                profile.disable()

        self._saved.append((cls, name, original))
        setattr(cls, name, run)

    def restore(self) -> None:
        for cls, name, original in reversed(self._saved):
            setattr(cls, name, original)
        self._saved.clear()


def print_profile(label: str, profile: cProfile.Profile, per: int, what: str, top: int) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    rows = []
    total = 0.0
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += tt
        short = file.split("/src/")[-1].split("/lib/python3")[-1]
        rows.append((tt, ct, nc, f"{short}:{line}({func})"))
    rows.sort(reverse=True)
    print(f"\n  [{label}] own time under cProfile, {total / per * 1e6:.0f} us per {what} in all")
    print(f"  {'own/' + what:>14} {'cum/' + what:>14} {'calls/' + what:>12}  function")
    for tt, ct, nc, name in rows[:top]:
        print(f"  {tt / per * 1e6:11.1f} us {ct / per * 1e6:11.1f} us {nc / per:12.2f}  {name}")


def profile_roundtrips(port_t: str, port_a: str, n: int, top: int) -> None:
    print(
        f"\n=== cProfile: {n} GET_STATUS round trips per runner (ranking; absolute times inflated)"
    )
    tp = ThreadProfiles()
    tp.patch(Device, "_run", "threaded I/O thread")
    try:
        device = connect(port_t)
        try:
            for _ in range(100):
                device.status()
            for p in tp.profiles.values():
                p.clear()  # type: ignore[attr-defined]
            caller = cProfile.Profile()
            caller.enable()
            for _ in range(n):
                device.status()
            caller.disable()
        finally:
            device.close()
    finally:
        tp.restore()
    print_profile("threaded: the caller's thread", caller, n, "trip", top)
    print_profile("threaded: the I/O thread", tp.profiles["threaded I/O thread"], n, "trip", top)

    tp = ThreadProfiles()
    tp.patch(AsyncDevice, "_read_loop", "asyncio reader thread")
    loop = LoopThread()
    try:
        unit: AsyncDevice = loop.run(estim.aio.connect(port_a))

        async def rounds(count: int) -> None:
            for _ in range(count):
                await unit.status()

        loop.run(rounds(100))
        for p in tp.profiles.values():
            p.clear()  # type: ignore[attr-defined]
        on_loop = cProfile.Profile()

        async def profiled() -> None:
            on_loop.enable()
            try:
                await rounds(n)
            finally:
                on_loop.disable()

        loop.run(profiled())
        loop.run(unit.close())
    finally:
        loop.close()
        tp.restore()
    print_profile("asyncio: the loop's thread", on_loop, n, "trip", top)
    print_profile(
        "asyncio: the reader thread", tp.profiles["asyncio reader thread"], n, "trip", top
    )


# --- 3. a live session: CPU per thread, and cProfile per heartbeat period ------------------------


class Segments:
    """Wall time spent inside wrapped functions (inclusive: nested ones count in both)."""

    def __init__(self) -> None:
        self.time: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.on = False

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        self.time.setdefault(name, 0.0)
        self.calls.setdefault(name, 0)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.time[name] += time.perf_counter() - t0
                self.calls[name] += 1

        return wrapped

    def report(self, beats: float) -> None:
        for name, total in self.time.items():
            print(
                f"  {total / beats * 1e6:7.1f} us in {self.calls[name] / beats:5.2f} calls per "
                f"heartbeat period  {name}"
            )


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.n += 1
            return fn(*args, **kwargs)

        return wrapped


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by name."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        tid = thread.native_id
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[f"{thread.name}"] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError):
            pass
    return out


def session_cpu(
    label: str,
    start: Callable[[], Any],
    stop: Callable[[Any], None],
    seconds: float,
) -> None:
    handle = start()
    time.sleep(1.0)
    c0, t0 = thread_cpu(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = thread_cpu(), time.monotonic()
    stop(handle)
    beats = (t1 - t0) * 10
    print(
        f"\n{label}: CPU per thread over {t1 - t0:.1f} s of a live session ({beats:.0f} heartbeats)"
    )
    rows = sorted(((c1[k] - c0.get(k, 0.0), k) for k in c1), reverse=True)
    total = sum(v for v, _ in rows)
    for v, k in rows:
        if v > 0:
            print(f"  {v / beats * 1e6:7.1f} us per heartbeat period  {k}")
    print(
        f"  {total / beats * 1e6:7.1f} us per heartbeat period in all = "
        f"{total / (t1 - t0) * 60:.3f} s per minute"
    )


def live_threaded(port: str, journal: Journal, seconds: float, top: int) -> None:
    def start() -> tuple[Device, Any]:
        device = connect(port)
        return device, device.start(PLAN, journal=journal)

    def stop(handle: tuple[Device, Any]) -> None:
        device, session = handle
        session.stop()
        session.wait(timeout=10)
        device.close()

    session_cpu("threaded runner (no instrumentation)", start, stop, seconds)
    segments = Segments()

    def start_timed() -> tuple[Device, Any]:
        device = connect(port)
        core = device._core
        for name in ("receive", "tick", "next_deadline", "take"):
            setattr(core, name, segments.wrap(f"core.{name}", getattr(core, name)))
        device._carry_out = segments.wrap("Device._carry_out (writes included)", device._carry_out)  # type: ignore[method-assign]
        device.port.write = segments.wrap("port.write (pyserial)", device.port.write)  # type: ignore[method-assign]
        device._read = segments.wrap("port reader (select wait included)", device._read)  # type: ignore[method-assign]
        device.port.cancel_read = segments.wrap(
            "port.cancel_read (wakes the I/O thread)", device.port.cancel_read
        )  # type: ignore[method-assign]
        return device, device.start(PLAN, journal=journal)

    handle = start_timed()
    time.sleep(1.0)
    segments.on = True
    t0 = time.monotonic()
    time.sleep(seconds)
    segments.on = False
    beats = (time.monotonic() - t0) * 10
    stop(handle)
    print("  wall time inside the I/O thread's steps (perf_counter, no profiler):")
    segments.report(beats)
    tp = ThreadProfiles()
    tp.patch(Device, "_run", "I/O thread")
    try:
        handle = start()
        time.sleep(1.0)
        tp.profiles["I/O thread"].clear()  # type: ignore[attr-defined]
        t0 = time.monotonic()
        time.sleep(seconds)
        beats = round((time.monotonic() - t0) * 10)
        profile = tp.profiles["I/O thread"]
        profile.disable()
        stop(handle)
    finally:
        tp.restore()
    print_profile("threaded: the I/O thread in a live session", profile, beats, "beat", top)


def live_asyncio(port: str, journal: Journal, seconds: float, top: int) -> None:
    loop = LoopThread()

    async def begin() -> tuple[AsyncDevice, Any]:
        unit = await estim.aio.connect(port)
        return unit, await unit.start(PLAN, journal=journal)

    async def end(handle: tuple[AsyncDevice, Any]) -> None:
        unit, session = handle
        await session.stop()
        await session.wait()
        await unit.close()

    try:
        session_cpu(
            "asyncio runner (no instrumentation)",
            lambda: loop.run(begin()),
            lambda h: loop.run(end(h)),
            seconds,
        )
        segments = Segments()

        async def begin_timed() -> tuple[AsyncDevice, Any]:
            unit = await estim.aio.connect(port)
            core = unit._core
            for name in ("receive", "tick", "next_deadline", "take"):
                setattr(core, name, segments.wrap(f"core.{name}", getattr(core, name)))
            unit._received = segments.wrap("AsyncDevice._received (on the loop)", unit._received)  # type: ignore[method-assign]
            unit._tick = segments.wrap("AsyncDevice._tick (timer, on the loop)", unit._tick)  # type: ignore[method-assign]
            unit._schedule = segments.wrap("AsyncDevice._schedule (timer handles)", unit._schedule)  # type: ignore[method-assign]
            unit.port.write = segments.wrap("port.write (pyserial)", unit.port.write)  # type: ignore[method-assign]
            unit._read = segments.wrap(
                "reader thread: port reader (select wait included)", unit._read
            )  # type: ignore[method-assign]
            return unit, await unit.start(PLAN, journal=journal)

        handle = loop.run(begin_timed())
        time.sleep(1.0)
        segments.on = True
        t0 = time.monotonic()
        time.sleep(seconds)
        segments.on = False
        beats = (time.monotonic() - t0) * 10
        loop.run(end(handle))
        print("  wall time inside the loop's steps (perf_counter, no profiler):")
        segments.report(beats)
        handle = loop.run(begin())
        time.sleep(1.0)
        profile = cProfile.Profile()

        async def on() -> None:
            profile.enable()

        async def off() -> None:
            profile.disable()

        # enabled from a coroutine: the profiler then follows the loop's thread
        loop.run(on())
        t0 = time.monotonic()
        time.sleep(seconds)
        beats = round((time.monotonic() - t0) * 10)
        loop.run(off())
        loop.run(end(handle))
    finally:
        loop.close()
    print_profile("asyncio: the loop's thread in a live session", profile, beats, "beat", top)


# --- 4. the stop path ----------------------------------------------------------------------------


def stop_path(port_t: str, port_a: str, journal: Journal, n: int) -> None:
    """Session.stop() to the STOP frame's write, on both runners."""

    def watch(stamps: Stamps, device: Any, session: Any) -> None:
        write = device.port.write

        def stop_write(wire: bytes) -> Any:
            # the STOP is the first frame of its length after the call (a HEARTBEAT is longer)
            is_stop = "write" not in stamps.now and len(wire) == len(STOP_WIRE)
            if is_stop:
                stamps.mark("write")
            try:
                return write(wire)
            finally:
                if is_stop:
                    stamps.mark("written")

        device.port.write = stop_write
        policy = session._policy
        policy._record = stamps.wrap(policy._record, "record", "recorded", first=True)

    print(f"\n=== the stop path: Session.stop() to the STOP's write, medians of {n} sessions")
    stamps = Stamps()
    device = connect(port_t)
    try:
        original_write = device.port.write
        for _ in range(n):
            device.port.write = original_write
            session = device.start(PLAN, journal=journal)
            time.sleep(0.1)
            watch(stamps, device, session)
            stamps.now.clear()
            stamps.mark("call")
            session.stop()
            stamps.mark("returned")
            stamps.row()
            session.wait(timeout=10)
        device.port.write = original_write
    finally:
        device.close()
    steps = [
        (
            "call -> the policy's stop_requested record starts (lock, waiter, STOP encoded)",
            "call",
            "record",
        ),
        (
            "the stop_requested EventRecord (pydantic, utc string), before the write",
            "record",
            "recorded",
        ),
        ("record made -> the STOP's write starts (_collect, take)", "recorded", "write"),
        ("port.write of the STOP", "write", "written"),
        ("written -> stop() returns (the unit's ACK, wake-ups)", "written", "returned"),
    ]
    report_timeline("threaded runner, Session.stop()", stamps, steps)

    stamps = Stamps()
    loop = LoopThread()
    try:
        unit: AsyncDevice = loop.run(estim.aio.connect(port_a))
        original_write = unit.port.write

        async def one() -> None:
            unit.port.write = original_write  # type: ignore[method-assign]
            session = await unit.start(PLAN, journal=journal)
            await asyncio.sleep(0.1)
            watch(stamps, unit, session)
            stamps.now.clear()
            stamps.mark("call")
            await session.stop()
            stamps.mark("returned")
            stamps.row()
            await session.wait()

        for _ in range(n):
            loop.run(one())
        unit.port.write = original_write  # type: ignore[method-assign]
        loop.run(unit.close())
    finally:
        loop.close()
    report_timeline("asyncio runner, await session.stop()", stamps, steps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3000, help="round trips per measurement")
    parser.add_argument("--seconds", type=float, default=10.0, help="live session window")
    parser.add_argument("--top", type=int, default=18, help="functions shown per profile")
    parser.add_argument("--stops", type=int, default=40, help="sessions for the stop path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="estim-profile-") as tmp:
        workdir = Path(tmp)
        binary = build_cunit(workdir)
        units = [Unit(workdir, (), tag=f"c{i}", kind="cunit", binary=binary) for i in range(3)]
        try:
            ports = [u.wait_port() for u in units]
            raw = RawLane("raw C unit", ports[2])
            samples = sorted(raw.block(args.n))
            raw.close()
            print(
                f"raw os.write/os.read GET_STATUS to the C unit: p50 {us(samples[len(samples) // 2])}"
            )
            timeline_threaded(ports[0], args.n)
            timeline_asyncio(ports[1], args.n)
            profile_roundtrips(ports[0], ports[1], args.n, args.top)
            print(f"\n=== a live session, {args.seconds:g} s (heartbeat 100 ms, status 1 s)")
            with Journal(workdir / "profile.db") as journal:
                live_threaded(ports[0], journal, args.seconds, args.top)
                live_asyncio(ports[1], journal, args.seconds, args.top)
                stop_path(ports[0], ports[1], journal, args.stops)
        finally:
            for unit in units:
                unit.close()
            cleanup_children()


if __name__ == "__main__":
    main()
