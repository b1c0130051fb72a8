"""The round trip of a plain request to the C reference unit over a pty, beside a raw
pty echo measured in the same run (python bench/cunit_roundtrip.py [N]).

Measured: a HEARTBEAT naming session 0 written to the unit's pty (built with
``cc -O2``), until its whole ACK frame is read back. Baseline: the same bytes to a
trivial python child on its own pty that answers every 0x00 with the same ACK
frame. Both use the same host code (raw tty, os.write, select, os.read) and are
interleaved in blocks of 100, so load hits both alike.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

from estim.protocol import Ack, Heartbeat, MessageType, State, encode

REFERENCE = Path(__file__).resolve().parent.parent / "firmware_protocol" / "reference"
ECHO = r"""
import os, sys, tty
master, slave = os.openpty()
tty.setraw(slave)
print("PORT " + os.ttyname(slave), flush=True)
reply = bytes.fromhex(sys.argv[1])
while True:
    data = os.read(master, 4096)
    for _ in range(data.count(0)):
        os.write(master, reply)
"""


def open_port(path: str, request: bytes, reply: bytes) -> int:
    """Open raw, then drain whatever came before (BOOTED) until the reply is seen."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    os.write(fd, request)
    seen = b""
    while not seen.endswith(reply):
        select.select([fd], [], [], 1.0)
        seen += os.read(fd, 4096)
    return fd


def round_trip(fd: int, request: bytes, reply: bytes) -> float:
    start = time.perf_counter()
    os.write(fd, request)
    got = b""
    while not got.endswith(b"\0"):
        select.select([fd], [], [], 1.0)
        got += os.read(fd, 4096)
    elapsed = time.perf_counter() - start
    assert got == reply, got.hex()
    return elapsed


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    request = encode(Heartbeat(seq=1, session_id=0))
    reply = encode(Ack(seq=1, request_type=MessageType.HEARTBEAT, state=State.IDLE))
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "estim-ref-c"
        sources = [str(REFERENCE / s) for s in ("posix_pty.c", "estim_unit.c", "estim_wire.c")]
        subprocess.run(["cc", "-std=c99", "-O2", "-o", str(binary), *sources], check=True)
        unit = subprocess.Popen([str(binary)], stdout=subprocess.PIPE, text=True)
        echo = subprocess.Popen(
            [sys.executable, "-c", ECHO, reply.hex()], stdout=subprocess.PIPE, text=True
        )
        try:
            assert unit.stdout is not None
            assert echo.stdout is not None
            unit_fd = open_port(unit.stdout.readline().split()[1], request, reply)
            echo_fd = open_port(echo.stdout.readline().split()[1], request, reply)
            times: dict[str, list[float]] = {"unit": [], "echo": []}
            for _ in range(n // 100):
                for name, fd in (("unit", unit_fd), ("echo", echo_fd)):
                    for _ in range(100):
                        times[name].append(round_trip(fd, request, reply))
            os.close(unit_fd)
            os.close(echo_fd)
        finally:
            unit.terminate()
            echo.terminate()
            unit.wait()
            echo.wait()
    for name, values in times.items():
        p50, p99 = percentile(values, 50) * 1e6, percentile(values, 99) * 1e6
        print(f"{name:5} n={len(values)} p50={p50:.0f} us p99={p99:.0f} us")


if __name__ == "__main__":
    main()
