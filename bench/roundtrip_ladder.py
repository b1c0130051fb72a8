"""Where between figure 1's floor (a raw echo) and ``device.status()`` a round trip's
time goes: GET_STATUS -> STATUS to the C unit, one layer more at a time.

    python bench/roundtrip_ladder.py [N]     # 3000 round trips per rung, interleaved

Rungs, each timed from just before the write to the answer in hand (p50, p99):

- ``echo``: figure 1's baseline, a raw os.write/os.read echo over a pty;
- ``raw``: the same GET_STATUS frame to the C unit, read up to its delimiter, not
  decoded;
- ``conn``: through ``HostConnection.send`` and ``receive`` in the calling thread
  (encode, decode, CRC, the answer matched to its request): what any host that
  checks the unit's answer does, with no thread;
- ``handoff``: ``conn`` with a reader thread that owns the port's reads and hands
  each answer to the caller with a ``threading.Event``: the least any threaded
  driver whose port is read by one thread can do;
- ``device``: ``estim.device`` ``device.status()`` (the threaded runner).

bench/PROFILE.md section 8 quotes a run.
"""

from __future__ import annotations

import os
import select
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import Unit, build_cunit, end_child, open_raw, percentile, start_echo

from estim.device import connect
from estim.protocol import GetStatus, encode
from estim.protocol.host import Answer, HostConnection


def read_frame(fd: int) -> bytes:
    data = b""
    while not data.endswith(b"\0"):
        select.select([fd], [], [], 1.0)
        data += os.read(fd, 4096)
    return data


class Handoff:
    """A reader thread that owns the port's reads; the caller writes and waits."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.conn = HostConnection(first_seq=1000)
        self.lock = threading.Lock()
        self.answered = threading.Event()
        self.closing = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.closing:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(self.fd, 4096)
            with self.lock:
                items = list(self.conn.receive(data, time.monotonic()))
            if any(isinstance(i, Answer) for i in items):
                self.answered.set()

    def ask(self) -> None:
        self.answered.clear()
        with self.lock:
            _, wire = self.conn.send(GetStatus(), time.monotonic())
        os.write(self.fd, wire)
        if not self.answered.wait(1.0):
            raise TimeoutError("no STATUS")

    def close(self) -> None:
        self.closing = True
        self.thread.join()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    status_frame = encode(GetStatus(seq=7))
    with tempfile.TemporaryDirectory(prefix="estim-rtladder-") as tmp:
        work = Path(tmp)
        binary = build_cunit(work)
        units = {
            name: Unit(work, (), tag=name, kind="cunit", binary=binary)
            for name in ("raw", "conn", "handoff", "device")
        }
        for unit in units.values():
            unit.wait_port()
        raw_fd = open_raw(units["raw"].port)
        conn_fd = open_raw(units["conn"].port)
        handoff = Handoff(open_raw(units["handoff"].port))
        device = connect(units["device"].port)
        # the echo answers with the very STATUS frame the C unit sends
        os.write(raw_fd, status_frame)
        reply = read_frame(raw_fd)
        echo, echo_port = start_echo(reply)
        echo_fd = open_raw(echo_port)
        conn = HostConnection(first_seq=2000)

        def echo_trip() -> None:
            os.write(echo_fd, status_frame)
            read_frame(echo_fd)

        def raw_trip() -> None:
            os.write(raw_fd, status_frame)
            read_frame(raw_fd)

        def conn_trip() -> None:
            _, wire = conn.send(GetStatus(), time.monotonic())
            os.write(conn_fd, wire)
            while True:
                select.select([conn_fd], [], [], 1.0)
                items = conn.receive(os.read(conn_fd, 4096), time.monotonic())
                if any(isinstance(i, Answer) for i in items):
                    return

        rungs: dict[str, Callable[[], None]] = {
            "echo": echo_trip,
            "raw": raw_trip,
            "conn": conn_trip,
            "handoff": handoff.ask,
            "device": lambda: device.status(),
        }
        times: dict[str, list[float]] = {name: [] for name in rungs}
        try:
            for _ in range(n // 100):
                for name, trip in rungs.items():
                    for _ in range(100):
                        t = time.perf_counter()
                        trip()
                        times[name].append((time.perf_counter() - t) * 1000)
        finally:
            handoff.close()
            device.close()
            end_child(echo)
            for unit in units.values():
                unit.close()
    floor = statistics.median(times["echo"])
    for name, samples in times.items():
        p50 = statistics.median(samples)
        print(
            f"{name:8} p50 {p50:.4f} ms ({p50 / floor:.2f}x echo)  "
            f"p99 {percentile(samples, 99):.4f} ms"
        )


if __name__ == "__main__":
    main()
