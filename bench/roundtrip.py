"""Figure 1 (and 7a): the round trip of one command over a real pseudo-terminal.

Measured: ``device.heartbeat()`` (HEARTBEAT out, its ACK back) through
``estim.device.connect(port)`` to ``estim simulate --pty --json`` in another
process. Baseline, in the same run and interleaved with it in blocks: the same
18-byte HEARTBEAT frame written with ``os.write`` to a trivial python echo child
on its own pty, which answers every frame with a fixed 16-byte reply (a real ACK
frame) that the bench reads back with ``os.read``. The baseline is the cost of
two processes and two ptys with no estim code at all.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable

from benchlib import Context, Figure, Sim, end_child, percentile, say, spawn

from estim.device import Device, connect
from estim.protocol import Ack, Heartbeat, MessageType, State, encode

#: the echo child: holds a pty's master (as the simulator does), prints the slave's
#: name, then answers every frame (every 0x00 it reads) with the reply in argv[1]
ECHO_CHILD = r"""
import os, sys, tty
master, slave = os.openpty()
tty.setraw(slave)
print(os.ttyname(slave), flush=True)
reply = bytes.fromhex(sys.argv[1])
while True:
    data = os.read(master, 4096)
    if not data:
        break
    for _ in range(data.count(0)):
        os.write(master, reply)
"""

FRAME = encode(Heartbeat(seq=0x1234, session_id=0))
REPLY = encode(Ack(seq=0x1234, request_type=MessageType.HEARTBEAT, state=State.IDLE))
#: HEARTBEATs with 1024 different seqs (the unit caches its last 8 answers by seq)
SEQ_FRAMES = [encode(Heartbeat(seq=s, session_id=0)) for s in range(1024)]
BLOCK = 100
WARMUP = 50


def start_echo() -> tuple[subprocess.Popen[bytes], str]:
    proc = spawn([sys.executable, "-c", ECHO_CHILD, REPLY.hex()], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20.0)
    if not ready:
        end_child(proc)
        raise RuntimeError("the echo child printed no pty name")
    name = proc.stdout.readline().decode().strip()
    if not name.startswith("/dev/"):
        end_child(proc)
        raise RuntimeError(f"the echo child printed {name!r}")
    return proc, name


def raw_roundtrip(fd: int) -> float:
    """One frame out, the whole reply back; seconds."""
    t0 = time.perf_counter()
    os.write(fd, FRAME)
    got = 0
    while got < len(REPLY):
        chunk = os.read(fd, 64)
        if not chunk:
            raise RuntimeError("the echo pty closed")
        got += len(chunk)
    return time.perf_counter() - t0


def device_roundtrip(device: Device) -> float:
    t0 = time.perf_counter()
    device.heartbeat()
    return time.perf_counter() - t0


def interleaved(count: int, *lanes: Callable[[], float]) -> list[list[float]]:
    """``count`` samples of each lane, in alternating blocks (so drift in the
    machine's load hits every lane alike), after a warm-up of each."""
    for _ in range(WARMUP):
        for lane in lanes:
            lane()
    out: list[list[float]] = [[] for _ in lanes]
    while len(out[0]) < count:
        n = min(BLOCK, count - len(out[0]))
        for lane, samples in zip(lanes, out, strict=True):
            samples += [lane() for _ in range(n)]
    return out


class RawToSim:
    """Diagnostic lane: the same raw os.write/os.read, but to a simulator process
    (valid HEARTBEATs with changing seq, so none is answered from the unit's
    retransmission cache). It separates the simulator's cost from the driver's."""

    def __init__(self, port: str) -> None:
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        self.i = 0

    def __call__(self) -> float:
        frame = SEQ_FRAMES[self.i % len(SEQ_FRAMES)]
        self.i += 1
        t0 = time.perf_counter()
        os.write(self.fd, frame)
        got = 0
        while got < len(REPLY):
            chunk = os.read(self.fd, 64)
            if not chunk:
                raise RuntimeError("the simulator's pty closed")
            got += len(chunk)
        return time.perf_counter() - t0

    def close(self) -> None:
        os.close(self.fd)


def measure_lanes(
    sim_options: tuple[str, ...], count: int, ctx: Context, *, baselines: bool
) -> list[list[float]]:
    """Round trips in seconds: [through estim to a simulator] and, with
    ``baselines``, [raw to the echo child] and [raw to a second simulator]."""
    sims = [Sim(ctx.workdir, sim_options, tag="rt")]
    if baselines:
        sims.append(Sim(ctx.workdir, sim_options, tag="rt-raw"))
    echo = None
    fd = -1
    raw_sim = None
    try:
        port = sims[0].wait_port()
        with connect(port) as device:
            lanes = [lambda: device_roundtrip(device)]
            if baselines:
                raw_sim = RawToSim(sims[1].wait_port())
                echo, echo_port = start_echo()
                fd = os.open(echo_port, os.O_RDWR | os.O_NOCTTY)
                lanes += [lambda: raw_roundtrip(fd), raw_sim]
            samples = interleaved(count, *lanes)
            retries, rejected = device.link.stats.retries, device.link.stats.rejected_frames
        if retries or rejected:
            ctx.notes.append(
                f"round trip {' '.join(sim_options) or '(no pacing)'}: the driver resent {retries} "
                f"request(s) and rejected {rejected} frame(s) from the unit"
            )
        return samples
    finally:
        if fd >= 0:
            os.close(fd)
        if raw_sim is not None:
            raw_sim.close()
        if echo is not None:
            end_child(echo)
        for sim in sims:
            sim.close()


def ms(seconds: float) -> float:
    return seconds * 1000.0


def measure(ctx: Context) -> list[Figure]:
    count = 500 if ctx.quick else 5000
    say(f"figure 1: {count} HEARTBEAT round trips through estim, and {count} raw on a pty echo")
    dev, raw, to_sim = measure_lanes((), count, ctx, baselines=True)
    raw50, raw99 = ms(percentile(raw, 50)), ms(percentile(raw, 99))
    dev50, dev99 = ms(percentile(dev, 50)), ms(percentile(dev, 99))
    sim50 = ms(percentile(to_sim, 50))
    ctx.shared["raw_roundtrip_p50_ms"] = raw50
    return [
        Figure(
            "roundtrip_p50",
            dev50,
            "ms",
            raw50,
            f"raw os.write/os.read echo over a pty, p50 (n={count})",
            "p50 within 3x of the raw echo",
            dev50 <= 3 * raw50,
        ),
        Figure(
            "roundtrip_p99",
            dev99,
            "ms",
            raw99,
            f"raw os.write/os.read echo over a pty, p99 (n={count})",
            "p99 < 1 ms",
            dev99 < 1.0,
        ),
        Figure(
            "roundtrip_raw_to_simulator_p50",
            sim50,
            "ms",
            raw50,
            f"raw os.write/os.read echo over a pty, p50 (n={count})",
            "diagnostic: the simulator's share of roundtrip_p50 (no driver)",
            None,
        ),
    ]


def measure_baud(ctx: Context) -> list[Figure]:
    count = 500 if ctx.quick else 5000
    say(f"figure 7a: {count} HEARTBEAT round trips at 115200 baud")
    (dev,) = measure_lanes(("baud=115200",), count, ctx, baselines=False)
    wire = ms((len(FRAME) + len(REPLY)) * 10 / 115200)
    dev50, dev99 = ms(percentile(dev, 50)), ms(percentile(dev, 99))
    raw50 = ctx.shared.get("raw_roundtrip_p50_ms")
    name = f"wire time of {len(FRAME)}+{len(REPLY)} bytes at 115200 baud (8N1)"
    return [
        Figure(
            "roundtrip_115200_p50",
            dev50,
            "ms",
            wire,
            name,
            "p50 <= wire time + 3x raw pty echo p50 (fig 1's goal above the wire floor)",
            None if raw50 is None else dev50 <= wire + 3 * raw50,
        ),
        Figure(
            "roundtrip_115200_p99",
            dev99,
            "ms",
            wire,
            name,
            "p99 < wire time + 1 ms (fig 1's goal above the wire floor)",
            dev99 < wire + 1.0,
        ),
    ]
