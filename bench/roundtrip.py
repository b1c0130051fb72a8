"""Figure 1 (and 7a): the round trip of one request and its answer over a real pty.

A round trip is GET_STATUS out and STATUS back, through the driver: ``device.status()``
on the threaded runner (``estim.connect``) and ``await unit.status()`` on the asyncio
runner (``estim.aio.connect``), each against two peers in processes of their own:

- the C reference unit (firmware_protocol/reference, built with ``cc -O2`` at the
  start of the run): a correct peer that costs almost nothing, so what is left is
  the driver's own cost;
- the Python simulator (``estim simulate --pty --json``), which costs a lot more.

Baselines, in the same run and interleaved with every lane in blocks of 100 (so
drift in the machine's load hits every lane alike):

- the raw echo (the floor): the same GET_STATUS bytes written with ``os.write`` to a
  trivial python child on its own pty, which answers every frame with a fixed
  STATUS frame (the very bytes the unit answered with) that the bench reads back with
  ``os.read``: two processes and a pty, no estim code at all;
- raw to each peer: the same ``os.write``/``os.read``, to the C unit and to the
  simulator (no driver), which splits each lane between the unit and the driver.

A diagnostic lane measures a HEARTBEAT (session 0) and its ACK through the threaded
driver's internal ``device._request`` (there is no public heartbeat call: the session
loop sends them).

The asyncio lanes run on a loop thread of their own and time each ``await`` inside the
loop; the threaded lanes are called from the bench's main thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchlib import (
    Context,
    Figure,
    LoopThread,
    Unit,
    end_child,
    failed_figure,
    open_raw,
    percentile,
    say,
    start_echo,
)

import estim.aio
from estim.device import Device, connect
from estim.protocol import Decoder, GetStatus, Heartbeat, Status, encode

BLOCK = 100
WARMUP = 50
#: GET_STATUS with 1024 different seqs
SEQ_FRAMES = [encode(GetStatus(seq=s)) for s in range(1024)]

#: issue 20 (it was 3x before)
C_RATIO_P50 = 2.0
C_GOAL_P50 = f"p50 within {C_RATIO_P50:g}x the raw echo p50"
C_GOAL_P99 = "p99 < 1 ms"


def read_frame(fd: int) -> bytes:
    """Read until a whole frame (its 0x00) is in."""
    got = os.read(fd, 4096)
    while not got.endswith(b"\0"):
        more = os.read(fd, 4096)
        if not more:
            raise RuntimeError("the pty closed")
        got += more
    return got


def drain(fd: int, settle: float = 0.05) -> None:
    """Throw away whatever the unit sent before we listened (BOOTED)."""
    time.sleep(settle)
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                if not os.read(fd, 4096):
                    break
            except BlockingIOError:
                break
    finally:
        os.set_blocking(fd, True)


class Lane:
    """One thing measured: ``block(n)`` returns n round trips in seconds."""

    name: str

    def block(self, n: int) -> list[float]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class RawLane(Lane):
    """os.write a GET_STATUS, os.read its whole answer: no driver."""

    def __init__(self, name: str, port: str) -> None:
        self.name = name
        self.fd = open_raw(port)
        self.i = 0
        drain(self.fd)
        self.reply = self.ask()

    def ask(self) -> bytes:
        """One GET_STATUS, answered (checked with the codec)."""
        frame = SEQ_FRAMES[self.i % len(SEQ_FRAMES)]
        seq = self.i % len(SEQ_FRAMES)
        self.i += 1
        os.write(self.fd, frame)
        decoder = Decoder()
        deadline = time.monotonic() + 2.0
        data = b""
        while time.monotonic() < deadline:
            data += read_frame(self.fd)
            for message in decoder.feed(data):
                if isinstance(message, Status) and message.seq == seq:
                    return data
            data = b""
        raise RuntimeError(f"{self.name}: no STATUS for a raw GET_STATUS")

    def one(self) -> float:
        frame = SEQ_FRAMES[self.i % len(SEQ_FRAMES)]
        self.i += 1
        fd = self.fd
        t0 = time.perf_counter()
        os.write(fd, frame)
        got = os.read(fd, 4096)
        while not got.endswith(b"\0"):
            got += os.read(fd, 4096)
        return time.perf_counter() - t0

    def block(self, n: int) -> list[float]:
        return [self.one() for _ in range(n)]

    def close(self) -> None:
        os.close(self.fd)


class EchoLane(RawLane):
    """The floor: the same bytes to a python child that answers a fixed STATUS frame."""

    def __init__(self, reply: bytes) -> None:
        self.proc, port = start_echo(reply)
        self.name = "raw echo"
        self.fd = open_raw(port)
        self.i = 0
        self.reply = reply

    def close(self) -> None:
        os.close(self.fd)
        end_child(self.proc)


class ThreadedLane(Lane):
    def __init__(self, name: str, port: str, *, heartbeat: bool = False) -> None:
        self.name = name
        self.device: Device = connect(port)
        self.owns = True
        self.call: Callable[[], object] = (
            (lambda: self.device._request(Heartbeat(session_id=0), "heartbeat"))
            if heartbeat
            else self.device.status
        )

    @classmethod
    def sharing(cls, name: str, other: ThreadedLane, *, heartbeat: bool) -> ThreadedLane:
        lane = cls.__new__(cls)
        lane.name = name
        lane.device = other.device
        lane.owns = False
        lane.call = (
            (lambda: other.device._request(Heartbeat(session_id=0), "heartbeat"))
            if heartbeat
            else other.device.status
        )
        return lane

    def block(self, n: int) -> list[float]:
        call = self.call
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            out.append(time.perf_counter() - t0)
        return out

    def stats(self) -> tuple[int, int]:
        return self.device.stats.retries, self.device.stats.rejected_frames

    def close(self) -> None:
        if self.owns:
            self.device.close()


class AioLane(Lane):
    def __init__(self, name: str, port: str, loop: LoopThread) -> None:
        self.name = name
        self.loop = loop
        self.unit: estim.aio.AsyncDevice = loop.run(estim.aio.connect(port))

    async def _block(self, n: int) -> list[float]:
        status = self.unit.status
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await status()
            out.append(time.perf_counter() - t0)
        return out

    def block(self, n: int) -> list[float]:
        return self.loop.run(self._block(n))

    def stats(self) -> tuple[int, int]:
        return self.unit.stats.retries, self.unit.stats.rejected_frames

    def close(self) -> None:
        self.loop.run(self.unit.close())


def interleaved(count: int, lanes: list[Lane]) -> dict[str, list[float]]:
    """``count`` samples of each lane, in alternating blocks, after a warm-up of each."""
    for lane in lanes:
        lane.block(WARMUP)
    out: dict[str, list[float]] = {lane.name: [] for lane in lanes}
    done = 0
    while done < count:
        n = min(BLOCK, count - done)
        for lane in lanes:
            out[lane.name] += lane.block(n)
        done += n
    return out


def ms(seconds: float) -> float:
    return seconds * 1000.0


@dataclass
class Lanes:
    """Every lane of one measurement, closed together."""

    ctx: Context
    lanes: list[Lane] = field(default_factory=list)

    def add(self, lane: Lane) -> Lane:
        self.lanes.append(lane)
        return lane

    def close(self) -> None:
        for lane in reversed(self.lanes):
            try:
                lane.close()
            except Exception as err:
                self.ctx.notes.append(f"closing lane {lane.name}: {err!r}")

    def driver_notes(self, what: str) -> None:
        for lane in self.lanes:
            if isinstance(lane, ThreadedLane | AioLane):
                retries, rejected = lane.stats()
                if retries or rejected:
                    self.ctx.notes.append(
                        f"{what} {lane.name}: the driver resent {retries} request(s) and "
                        f"rejected {rejected} frame(s) from the unit"
                    )


UNITS_PTY = [
    ("cunit-raw", "cunit", ()),
    ("cunit-threaded", "cunit", ()),
    ("cunit-aio", "cunit", ()),
    ("sim-raw", "sim", ()),
    ("sim-threaded", "sim", ()),
    ("sim-aio", "sim", ()),
]


def measure(ctx: Context) -> list[Figure]:
    count = 500 if ctx.quick else 5000
    units: dict[str, Unit] = ctx.units(UNITS_PTY)
    c_error = ctx.cunit_error()
    say(
        f"figure 1: {count} GET_STATUS round trips per lane: raw echo, raw and both runners "
        "to the C unit and to the Python simulator, interleaved"
    )
    lanes = Lanes(ctx)
    loop = LoopThread()
    try:
        raw_c = lanes.add(RawLane("raw C unit", units["cunit-raw"].port)) if not c_error else None
        raw_s = lanes.add(RawLane("raw simulator", units["sim-raw"].port))
        assert isinstance(raw_s, RawLane)
        reply = raw_c.reply if isinstance(raw_c, RawLane) else raw_s.reply
        lanes.add(EchoLane(reply))
        if not c_error:
            thr_c = lanes.add(ThreadedLane("threaded C unit", units["cunit-threaded"].port))
            assert isinstance(thr_c, ThreadedLane)
            lanes.add(ThreadedLane.sharing("threaded C unit HEARTBEAT", thr_c, heartbeat=True))
            lanes.add(AioLane("asyncio C unit", units["cunit-aio"].port, loop))
        lanes.add(ThreadedLane("threaded simulator", units["sim-threaded"].port))
        lanes.add(AioLane("asyncio simulator", units["sim-aio"].port, loop))
        samples = interleaved(count, lanes.lanes)
        lanes.driver_notes("round trip")
    finally:
        lanes.close()
        loop.close()

    def p(name: str, q: float) -> float:
        return ms(percentile(samples[name], q))

    echo50, echo99 = p("raw echo", 50), p("raw echo", 99)
    ctx.shared["raw_roundtrip_p50_ms"] = echo50
    ctx.shared["raw_roundtrip_p99_ms"] = echo99
    n = f"n={count}"
    echo_name = f"raw os.write/os.read echo over a pty, same run ({n})"
    figures: list[Figure] = []
    for runner in ("threaded", "asyncio"):
        key = f"{runner} C unit"
        short = "aio" if runner == "asyncio" else runner
        if c_error:
            for q, goal in ((50, C_GOAL_P50), (99, C_GOAL_P99)):
                figures.append(
                    failed_figure(
                        f"roundtrip_{short}_cunit_p{q}",
                        "ms",
                        goal,
                        c_error,
                        f"round trip to the C unit, {runner}, p{q}",
                    )
                )
            continue
        v50, v99 = p(key, 50), p(key, 99)
        figures += [
            Figure(
                f"roundtrip_{short}_cunit_p50",
                v50,
                "ms",
                echo50,
                echo_name + ", p50",
                C_GOAL_P50,
                v50 <= C_RATIO_P50 * echo50,
                title=f"round trip to the C unit, {runner} runner, p50",
            ),
            Figure(
                f"roundtrip_{short}_cunit_p99",
                v99,
                "ms",
                echo99,
                echo_name + ", p99",
                C_GOAL_P99,
                v99 < 1.0,
                title=f"round trip to the C unit, {runner} runner, p99",
            ),
        ]
    raw_sim50, raw_sim99 = p("raw simulator", 50), p("raw simulator", 99)
    for runner in ("threaded", "asyncio"):
        short = "aio" if runner == "asyncio" else runner
        key = f"{runner} simulator"
        for q, base in ((50, raw_sim50), (99, raw_sim99)):
            figures.append(
                Figure(
                    f"roundtrip_{short}_sim_p{q}",
                    p(key, q),
                    "ms",
                    base,
                    f"raw os.write/os.read to the Python simulator, p{q} ({n})",
                    "info: the simulator's own cost is in value and baseline alike",
                    None,
                    headline=q == 50,
                    title=f"round trip to the Python simulator, {runner} runner, p{q}",
                )
            )
    if not c_error:
        figures += [
            Figure(
                "roundtrip_raw_cunit_p50",
                p("raw C unit", 50),
                "ms",
                echo50,
                echo_name + ", p50",
                "info: the C unit's share (no driver)",
                None,
                headline=True,
                title="raw os.write/os.read to the C unit, p50",
            ),
            Figure(
                "roundtrip_threaded_cunit_heartbeat_p50",
                p("threaded C unit HEARTBEAT", 50),
                "ms",
                echo50,
                echo_name + ", p50",
                "info: HEARTBEAT/ACK through device._request (no public call)",
                None,
                title="HEARTBEAT round trip to the C unit, threaded, p50",
            ),
        ]
    figures.append(
        Figure(
            "roundtrip_raw_sim_p50",
            raw_sim50,
            "ms",
            echo50,
            echo_name + ", p50",
            "info: the simulator's share (no driver)",
            None,
            headline=True,
            title="raw os.write/os.read to the Python simulator, p50",
        )
    )
    # the driver's own share: a lane minus the raw round trip to the same kind of unit
    shares = []
    for runner in ("threaded", "asyncio"):
        if not c_error:
            shares.append(
                f"{runner} {1000 * (p(f'{runner} C unit', 50) - p('raw C unit', 50)):.0f} us "
                "(C unit)"
            )
        shares.append(
            f"{runner} {1000 * (p(f'{runner} simulator', 50) - raw_sim50):.0f} us (simulator)"
        )
    ctx.notes.append(
        "round trip: the driver's own share of the p50 (lane minus raw to the same kind of "
        "unit): " + ", ".join(shares) + f"; raw echo p50 {1000 * echo50:.0f} us"
    )
    return figures


UNITS_115200 = [
    ("sim115-raw", "sim", ("baud=115200",)),
    ("sim115-threaded", "sim", ("baud=115200",)),
    ("sim115-aio", "sim", ("baud=115200",)),
]


def measure_baud(ctx: Context) -> list[Figure]:
    count = 300 if ctx.quick else 1000
    units = ctx.units(UNITS_115200)
    say(f"figure 7a: {count} GET_STATUS round trips per lane at 115200 baud (Python simulator)")
    ctx.notes.append(
        "115200 baud: measured on the Python simulator only; the C reference unit has no "
        "baud option (its README: the link options are not supported)"
    )
    lanes = Lanes(ctx)
    loop = LoopThread()
    try:
        raw = lanes.add(RawLane("raw simulator 115200", units["sim115-raw"].port))
        assert isinstance(raw, RawLane)
        request_len, reply_len = len(SEQ_FRAMES[0]), len(raw.reply)
        lanes.add(ThreadedLane("threaded simulator 115200", units["sim115-threaded"].port))
        lanes.add(AioLane("asyncio simulator 115200", units["sim115-aio"].port, loop))
        samples = interleaved(count, lanes.lanes)
        lanes.driver_notes("round trip at 115200 baud")
    finally:
        lanes.close()
        loop.close()
    wire = ms((request_len + reply_len) * 10 / 115200)
    name = f"wire time of {request_len}+{reply_len} bytes at 115200 baud (8N1)"
    figures = []
    raw50 = ms(percentile(samples["raw simulator 115200"], 50))
    for runner in ("threaded", "asyncio"):
        short = "aio" if runner == "asyncio" else runner
        s = samples[f"{runner} simulator 115200"]
        v50, v99 = ms(percentile(s, 50)), ms(percentile(s, 99))
        figures += [
            Figure(
                f"roundtrip_115200_{short}_sim_p50",
                v50,
                "ms",
                wire,
                name + f"; raw os.write/os.read to the same simulator p50 {raw50:.3f} ms",
                "info (no goal: the simulator's pacing and loop are in it)",
                None,
                headline=True,
                title=f"round trip at 115200 baud (Python simulator), {runner}, p50",
            ),
            Figure(
                f"roundtrip_115200_{short}_sim_p99",
                v99,
                "ms",
                wire,
                name,
                "info (no goal: the simulator's pacing and loop are in it)",
                None,
                title=f"round trip at 115200 baud (Python simulator), {runner}, p99",
            ),
        ]
    figures.append(
        Figure(
            "roundtrip_115200_raw_sim_p50",
            raw50,
            "ms",
            wire,
            name,
            "info: the floor at this baud rate (simulator, no driver)",
            None,
            title="raw round trip at 115200 baud (Python simulator), p50",
        )
    )
    return figures
