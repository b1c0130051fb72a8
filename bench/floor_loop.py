"""One rung of ``bench/floor_ladder.py``: figure 5's bare loop with one layer more.

    python bench/floor_loop.py VARIANT PORT SESSION_ID

The same traffic as ``bench/bare_loop.py`` for 25 s (CONFIGURE_CHANNEL and START
raw, then a HEARTBEAT every 100 ms and a GET_STATUS every second), where VARIANT says
what is done with the bytes:

- ``base``: pre-encoded frames written, answers read and not decoded (figure 5's floor);
- ``decode``: the same, every answer through ``estim.protocol.Decoder`` (COBS, CRC,
  header, fields): what any host that checks the unit's answers must do;
- ``conn``: every request through ``HostConnection.send`` and every answer through
  ``HostConnection.receive`` (sequence numbers, pending requests, matching answers to
  requests): estim's sans-I/O protocol layer with no session policy above it;
- ``thread-wake-conn``: ``conn`` on a thread that is not the main one, its ``select``
  also watching a wake-up pipe, as the threaded runner's I/O thread does.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time

from bare_loop import open_and_start

from estim.protocol import Decoder, GetStatus, Heartbeat, Stop, StopReason, encode
from estim.protocol.host import HostConnection

SECONDS = 25.0


def run(variant: str, port: str, session: int) -> None:
    fd = open_and_start(port, session, 60.0)
    beats = [encode(Heartbeat(seq=s, session_id=session)) for s in range(16, 4096)]
    polls = [encode(GetStatus(seq=s)) for s in range(4096, 8192)]
    decoder = Decoder()
    conn = HostConnection(first_seq=100)
    heartbeat, status = Heartbeat(session_id=session), GetStatus()
    wake, _ = os.pipe()
    watched = [fd, wake] if "wake" in variant else [fd]
    started = next_beat = time.monotonic()
    n = 0
    while time.monotonic() < started + SECONDS:
        ready, _, _ = select.select(watched, [], [], max(0.0, next_beat - time.monotonic()))
        if ready:
            data = os.read(fd, 4096)
            if "conn" in variant:
                list(conn.receive(data, time.monotonic()))
            elif variant == "decode":
                decoder.feed(data, time.monotonic())
        if time.monotonic() >= next_beat:
            if "conn" in variant:
                now = time.monotonic()
                os.write(fd, conn.send(heartbeat, now)[1])
                if n % 10 == 0:
                    os.write(fd, conn.send(status, now)[1])
            else:
                os.write(fd, beats[n % len(beats)])
                if n % 10 == 0:
                    os.write(fd, polls[(n // 10) % len(polls)])
            n += 1
            next_beat += 0.1
    os.write(fd, encode(Stop(seq=3, reason=int(StopReason.OPERATOR))))


if __name__ == "__main__":
    variant, port, session = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if "thread" in variant:
        worker = threading.Thread(target=run, args=(variant, port, session))
        worker.start()
        worker.join()
    else:
        run(variant, port, session)
