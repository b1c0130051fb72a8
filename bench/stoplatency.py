"""Figure 2 (and 7b): stop latency, from the host's call to the unit's own output off.

For each sample, a session is started on the unit (60 s dwell, the unit's minimum),
runs 0.1-0.2 s (seeded random, so the stop falls anywhere between two heartbeats),
and is stopped. The latency is the unit's own ``output_off`` time ``t`` in its
``--json`` log minus the host's ``time.monotonic()`` just before the call
(CLOCK_MONOTONIC is shared by every process on Linux).

Lanes, interleaved in blocks of 10 sessions:

- threaded: ``device.start(plan)`` then ``Session.stop()``;
- asyncio: ``await unit.start(plan)`` then ``await session.stop()`` (timed inside the loop);
- raw (the floor): CONFIGURE_CHANNEL and START written with ``os.write`` (watchdog
  2 s, so no heartbeat is needed for the short session), then the STOP frame: what
  the unit itself takes to act on a STOP, with no driver;

each against the C reference unit and against the Python simulator, so every
driver figure has the raw STOP to the same kind of unit as its baseline.

A session whose ``output_off`` was not caused by the STOP (e.g. the watchdog fired
because a process was starved of CPU) is left out of the latencies and counted;
the bench then reconnects, clears the unit's fault and goes on.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from functools import partial
from typing import Any

from benchlib import Context, Figure, LoopThread, Unit, failed_figure, open_raw, percentile, say
from roundtrip import drain

import estim.aio
from estim.device import Device, connect
from estim.errors import EstimError
from estim.journal import Journal
from estim.plan import ChannelPlan, SessionPlan
from estim.protocol import (
    Ack,
    ClearFault,
    ConfigureChannel,
    Decoder,
    GetStatus,
    Message,
    Mode,
    Nack,
    Start,
    State,
    Status,
    Stop,
    StopReason,
    Waveform,
    encode,
)

PLAN = SessionPlan(
    dwell=60,
    ramp=5,
    channels=[ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=5)],
)
STOP_FRAME = encode(Stop(seq=0x1234, reason=int(StopReason.OPERATOR)))
BLOCK = 10
C_GOAL = "p99 < 1 ms"


def _is_off(session_id: int, entry: dict[str, Any]) -> bool:
    return bool(entry["kind"] == "output_off" and entry["session_id"] == session_id)


class StopLane:
    """``one(delay) -> (t_call, session_id)``: a session started, ``delay`` s of output,
    and the host's monotonic time just before it asked for the stop."""

    name: str
    unit: Unit
    kind: str  # "raw", "threaded", "asyncio"

    def one(self, delay: float) -> tuple[float, int]:
        raise NotImplementedError

    def recover(self) -> None:
        """After a session that did not end by its STOP: make the unit usable again."""

    def stats(self) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        pass


class RawStopLane(StopLane):
    kind = "raw"

    def __init__(self, name: str, unit: Unit, rng: random.Random) -> None:
        self.name = name
        self.unit = unit
        self.rng = rng
        self.fd = open_raw(unit.port)
        self.seq = 0x4000
        drain(self.fd)
        self.decoder = Decoder()

    def ask(self, message: Message) -> Message:
        self.seq = (self.seq + 1) & 0xFFFF
        seq = self.seq
        os.write(self.fd, encode(_with_seq(message, seq)))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            data = os.read(self.fd, 4096)
            for got in self.decoder.feed(data):
                if isinstance(got, Ack | Nack | Status) and got.seq == seq:
                    if isinstance(got, Nack):
                        raise RuntimeError(f"{self.name}: the unit refused {message}: {got}")
                    return got
        raise RuntimeError(f"{self.name}: no answer to {type(message).__name__}")

    def one(self, delay: float) -> tuple[float, int]:
        # PROTOCOL.md 10 (1.4): a new id is above the unit's last one.
        status = self.ask(GetStatus())
        assert isinstance(status, Status)
        session_id = status.session_id + self.rng.randrange(1, 1 << 16)
        self.ask(
            ConfigureChannel(
                channel=1,
                waveform=Waveform.BIPHASIC_SYMMETRIC,
                mode=Mode.CONTINUOUS,
                frequency_dhz=20,
                pulse_width_us=250,
                amplitude_ua=5000,
                alt_frequency_dhz=0,
                switch_ms=0,
            )
        )
        self.ask(
            Start(
                session_id=session_id,
                dwell_ms=60_000,
                ramp_ms=5_000,
                watchdog_ms=2_000,
                channel_mask=1,
            )
        )
        time.sleep(delay)
        self.seq = (self.seq + 1) & 0xFFFF
        frame = encode(Stop(seq=self.seq, reason=int(StopReason.OPERATOR)))
        t_call = time.monotonic()
        os.write(self.fd, frame)
        drain(self.fd, 0.005)
        return t_call, session_id

    def recover(self) -> None:
        try:
            self.ask(ClearFault())
        except RuntimeError:
            pass

    def close(self) -> None:
        os.close(self.fd)


def _with_seq(message: Message, seq: int) -> Message:
    from dataclasses import replace

    return replace(message, seq=seq)


class ThreadedStopLane(StopLane):
    kind = "threaded"

    def __init__(self, name: str, unit: Unit, journal: Journal) -> None:
        self.name = name
        self.unit = unit
        self.journal = journal
        self.device: Device | None = None
        self.retries = self.rejected = 0
        self._connect()

    def _connect(self) -> Device:
        if self.device is None:
            self.device = connect(self.unit.port)
            if self.device.status().state == State.FAULT:
                self.device.clear_fault()
        return self.device

    def one(self, delay: float) -> tuple[float, int]:
        device = self._connect()
        session = device.start(PLAN, journal=self.journal)
        time.sleep(delay)
        t_call = time.monotonic()
        session.stop()
        session.wait(timeout=10)
        return t_call, session.session_id

    def recover(self) -> None:
        device = self.device
        try:
            healthy = (
                device is not None and device.lost is None and device.status().state != State.FAULT
            )
        except EstimError:
            healthy = False
        if not healthy:
            self.close()

    def stats(self) -> tuple[int, int]:
        if self.device is not None:
            return (
                self.retries + self.device.stats.retries,
                self.rejected + self.device.stats.rejected_frames,
            )
        return self.retries, self.rejected

    def close(self) -> None:
        if self.device is not None:
            self.retries, self.rejected = self.stats()
            self.device.close()
            self.device = None


class AioStopLane(StopLane):
    kind = "asyncio"

    def __init__(self, name: str, unit: Unit, journal: Journal, loop: LoopThread) -> None:
        self.name = name
        self.unit = unit
        self.journal = journal
        self.loop = loop
        self.device: estim.aio.AsyncDevice | None = None
        self.retries = self.rejected = 0
        loop.run(self._connect())

    async def _connect(self) -> estim.aio.AsyncDevice:
        if self.device is None:
            self.device = await estim.aio.connect(self.unit.port)
            if (await self.device.status()).state == State.FAULT:
                await self.device.clear_fault()
        return self.device

    async def _one(self, delay: float) -> tuple[float, int]:
        device = await self._connect()
        session = await device.start(PLAN, journal=self.journal)
        await asyncio.sleep(delay)
        t_call = time.monotonic()
        await session.stop()
        await asyncio.wait_for(session.wait(), 10)
        return t_call, session.session_id

    def one(self, delay: float) -> tuple[float, int]:
        return self.loop.run(self._one(delay))

    async def _healthy(self) -> bool:
        device = self.device
        try:
            return (
                device is not None
                and device.lost is None
                and (await device.status()).state != State.FAULT
            )
        except EstimError:
            return False

    def recover(self) -> None:
        if not self.loop.run(self._healthy()):
            self.close()

    def stats(self) -> tuple[int, int]:
        if self.device is not None:
            return (
                self.retries + self.device.stats.retries,
                self.rejected + self.device.stats.rejected_frames,
            )
        return self.retries, self.rejected

    def close(self) -> None:
        if self.device is not None:
            self.retries, self.rejected = self.stats()
            self.loop.run(self.device.close())
            self.device = None


def run_lanes(
    ctx: Context, lanes: list[StopLane], count: int, rng: random.Random
) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """``count`` stop latencies (seconds) per lane, in blocks of BLOCK sessions per lane."""
    out: dict[str, list[float]] = {lane.name: [] for lane in lanes}
    failures: dict[str, list[str]] = {lane.name: [] for lane in lanes}
    done = 0
    while done < count:
        n = min(BLOCK, count - done)
        for lane in lanes:
            for _ in range(n):
                delay = 0.1 + rng.uniform(0.0, 0.1)
                ok = False
                try:
                    t_call, session_id = lane.one(delay)
                    off = lane.unit.wait_for(partial(_is_off, session_id), timeout=5)
                    if off["reason"] == "stop":
                        out[lane.name].append(off["t"] - t_call)
                        ok = True
                    else:
                        gap = off.get("max_frame_gap_ms", "?")
                        failures[lane.name].append(
                            f"ended by {off['reason']!r}; the unit's max frame gap {gap} ms"
                        )
                except (EstimError, TimeoutError, RuntimeError) as err:
                    failures[lane.name].append(f"{type(err).__name__}: {err}")
                if not ok:
                    lane.recover()
        done += n
    for lane in lanes:
        retries, rejected = lane.stats()
        if retries or rejected:
            ctx.notes.append(
                f"stop latency {lane.name}: the driver resent {retries} request(s) and rejected "
                f"{rejected} frame(s) from the unit"
            )
        for failure in failures[lane.name]:
            ctx.notes.append(
                f"stop latency {lane.name}: a session did not end by its STOP: {failure}"
            )
        negative = [x for x in out[lane.name] if x < 0]
        if negative:
            ctx.notes.append(
                f"stop latency {lane.name}: {len(negative)} negative latencies (clock?): {negative[:3]}"
            )
    return out, failures


def make_lanes(
    ctx: Context,
    units: dict[str, Unit],
    prefix: str,
    suffix: str,
    loop: LoopThread,
    rng: random.Random,
) -> list[StopLane]:
    journal = Journal(ctx.workdir / f"stop-{prefix}{suffix}.db")
    ctx.shared.setdefault("journals", []).append(journal)
    return [
        RawStopLane(f"raw {prefix}{suffix}", units[f"{prefix}{suffix}-raw"], rng),
        ThreadedStopLane(
            f"threaded {prefix}{suffix}", units[f"{prefix}{suffix}-threaded"], journal
        ),
        AioStopLane(f"asyncio {prefix}{suffix}", units[f"{prefix}{suffix}-aio"], journal, loop),
    ]


def _close(ctx: Context, lanes: list[StopLane]) -> None:
    for lane in lanes:
        try:
            lane.close()
        except Exception as err:
            ctx.notes.append(f"closing {lane.name}: {err!r}")
    for journal in ctx.shared.pop("journals", []):
        journal.close()


def _n(samples: list[float]) -> str:
    return f"n={len(samples)}" + ("" if len(samples) >= 100 else ": p99 is the maximum")


def measure(ctx: Context) -> list[Figure]:
    from roundtrip import UNITS_PTY

    count = 6 if ctx.quick else 100
    units = ctx.units(UNITS_PTY)
    c_error = ctx.cunit_error()
    say(
        f"figure 2: stop latency, {count} sessions per lane (raw, threaded, asyncio) on the "
        "C unit and on the Python simulator"
    )
    rng = random.Random(ctx.seed + 2)
    loop = LoopThread()
    lanes: list[StopLane] = []
    try:
        if not c_error:
            lanes += make_lanes(ctx, units, "cunit", "", loop, rng)
        lanes += make_lanes(ctx, units, "sim", "", loop, rng)
        lat, failures = run_lanes(ctx, lanes, count, rng)
    finally:
        _close(ctx, lanes)
        loop.close()

    def ms(name: str, q: float) -> float:
        return percentile(lat[name], q) * 1000 if lat[name] else float("nan")

    figures: list[Figure] = []
    for runner, short in (("threaded", "threaded"), ("asyncio", "aio")):
        if c_error:
            figures.append(
                failed_figure(
                    f"stop_{short}_cunit_p99", "ms", C_GOAL, c_error, "stop latency, C unit"
                )
            )
            continue
        lane = f"{runner} cunit"
        base = f"raw STOP to the C unit (os.write, no driver), same run; {_n(lat[lane])}"
        figures += [
            Figure(
                f"stop_{short}_cunit_p50",
                ms(lane, 50),
                "ms",
                ms("raw cunit", 50),
                base + ", p50",
                "(p99 is the goal)",
                None,
                title=f"Session.stop() to the C unit's output off, {runner}, p50",
            ),
            Figure(
                f"stop_{short}_cunit_p99",
                ms(lane, 99),
                "ms",
                ms("raw cunit", 99),
                base + ", p99",
                C_GOAL,
                ms(lane, 99) < 1.0,
                title=f"Session.stop() to the C unit's output off, {runner}, p99",
            ),
        ]
    for runner, short in (("threaded", "threaded"), ("asyncio", "aio")):
        lane = f"{runner} sim"
        base = f"raw STOP to the Python simulator, same run; {_n(lat[lane])}"
        figures += [
            Figure(
                f"stop_{short}_sim_p50",
                ms(lane, 50),
                "ms",
                ms("raw sim", 50),
                base + ", p50",
                "info: the simulator's own latency is in value and baseline alike",
                None,
                title=f"Session.stop() to the Python simulator's output off, {runner}, p50",
            ),
            Figure(
                f"stop_{short}_sim_p99",
                ms(lane, 99),
                "ms",
                ms("raw sim", 99),
                base + ", p99",
                "info: the simulator's own latency is in value and baseline alike",
                None,
                headline=True,
                title=f"Session.stop() to the Python simulator's output off, {runner}, p99",
            ),
        ]
    if not c_error:
        figures.append(
            Figure(
                "stop_raw_cunit_p99",
                ms("raw cunit", 99),
                "ms",
                ctx.shared.get("raw_roundtrip_p99_ms"),
                "raw echo round trip p99 (figure 1)",
                "info: the floor (the C unit acting on a raw STOP)",
                None,
                headline=True,
                title="raw STOP to the C unit's output off, p99",
            )
        )
    tried = count * len(lanes)
    failed = sum(len(v) for v in failures.values())
    figures.append(
        Figure(
            "stop_sessions_not_stopped",
            failed,
            "sessions",
            tried,
            "sessions tried (every lane)",
            "0 (every STOP ends its session)",
            failed == 0,
            title="sessions that did not end by their STOP (figure 2)",
        )
    )
    return figures


def measure_baud(ctx: Context) -> list[Figure]:
    from roundtrip import UNITS_115200

    count = 6 if ctx.quick else 100
    units = ctx.units(UNITS_115200)
    say(f"figure 7b: stop latency at 115200 baud, {count} sessions per lane (Python simulator)")
    rng = random.Random(ctx.seed + 7)
    loop = LoopThread()
    lanes: list[StopLane] = []
    try:
        lanes += make_lanes(ctx, units, "sim", "115", loop, rng)
        lat, failures = run_lanes(ctx, lanes, count, rng)
    finally:
        _close(ctx, lanes)
        loop.close()
    wire = len(STOP_FRAME) * 10 / 115200 * 1000
    raw99 = percentile(lat["raw sim115"], 99) * 1000
    figures = []
    for runner, short in (("threaded", "threaded"), ("asyncio", "aio")):
        samples = lat[f"{runner} sim115"]
        if not samples:
            figures.append(
                failed_figure(
                    f"stop_115200_{short}_sim_p99",
                    "ms",
                    "",
                    "no session ended by its STOP",
                )
            )
            continue
        p50 = percentile(samples, 50) * 1000
        p99 = percentile(samples, 99) * 1000
        base = (
            f"wire time of the {len(STOP_FRAME)}-byte STOP frame at 115200 baud; raw STOP to "
            f"the same simulator p99 {raw99:.3f} ms; {_n(samples)}"
        )
        figures += [
            Figure(
                f"stop_115200_{short}_sim_p50",
                p50,
                "ms",
                wire,
                base,
                "(p99 is the goal)",
                None,
                title=f"stop latency at 115200 baud (Python simulator), {runner}, p50",
            ),
            Figure(
                f"stop_115200_{short}_sim_p99",
                p99,
                "ms",
                wire,
                base,
                "p99 < STOP wire time + 1 ms",
                p99 < wire + 1.0,
                title=f"stop latency at 115200 baud (Python simulator), {runner}, p99",
            ),
        ]
    tried = count * len(lanes)
    failed = sum(len(v) for v in failures.values())
    figures.append(
        Figure(
            "stop_115200_sessions_not_stopped",
            failed,
            "sessions",
            tried,
            "sessions tried (every lane)",
            "0 (every STOP ends its session)",
            failed == 0,
            title="sessions that did not end by their STOP (115200 baud)",
        )
    )
    return figures
