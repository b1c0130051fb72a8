"""The floor of figure 5: the same traffic as a session's host, from a bare python loop.

One thread, no estim code at run time: CONFIGURE_CHANNEL and START (60 s, 500 ms
watchdog) written raw, then a pre-encoded HEARTBEAT every 100 ms and a GET_STATUS
every second, every answer read with ``select`` + ``os.read`` and not decoded.
SIGINT/SIGTERM write a STOP from the signal handler itself and end it (the floor of
figure 10, Ctrl-C); the end of the dwell sends one too. What it costs is what waking
up ten times a second, writing a frame and reading the answer costs a Python process
on this machine: no driver can cost less.

    python bench/bare_loop.py --port /dev/pts/N [--session ID]
"""

from __future__ import annotations

import argparse
import os
import random
import select
import signal
import sys
import time
import tty

from estim.protocol import (
    ConfigureChannel,
    GetStatus,
    Heartbeat,
    Mode,
    Start,
    Stop,
    StopReason,
    Waveform,
    encode,
)

STOP = encode(Stop(seq=3, reason=int(StopReason.OPERATOR)))
stopping = False
port_fd = -1


def on_signal(signum: int, frame: object) -> None:
    global stopping
    if not stopping:
        os.write(port_fd, STOP)
    stopping = True


def ask(fd: int, frame: bytes) -> None:
    """Write a request and wait (at most 1 s) for bytes back."""
    os.write(fd, frame)
    select.select([fd], [], [], 1.0)
    time.sleep(0.01)
    os.read(fd, 4096)


def open_and_start(port: str, session: int, dwell_s: float) -> int:
    """The port, raw, with a session started on it by raw frames: CONFIGURE_CHANNEL
    (channel 1, 2 Hz, 250 us, 5 mA) and START (5 s ramp, 500 ms watchdog)."""
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    time.sleep(0.05)
    os.set_blocking(fd, False)
    try:
        os.read(fd, 4096)  # BOOTED, sent before we listened
    except BlockingIOError:
        pass
    os.set_blocking(fd, True)
    configure = ConfigureChannel(
        seq=1,
        channel=1,
        waveform=Waveform.BIPHASIC_SYMMETRIC,
        mode=Mode.CONTINUOUS,
        frequency_dhz=20,
        pulse_width_us=250,
        amplitude_ua=5000,
        alt_frequency_dhz=0,
        switch_ms=0,
    )
    ask(fd, encode(configure))
    start = Start(
        seq=2,
        session_id=session,
        dwell_ms=round(dwell_s * 1000),
        ramp_ms=5000,
        watchdog_ms=500,
        channel_mask=1,
    )
    ask(fd, encode(start))
    return fd


def main(port: str, dwell_s: float, session: int) -> int:
    global port_fd
    session = session or random.randrange(1, 1 << 32)
    fd = port_fd = open_and_start(port, session, dwell_s)
    beats = [encode(Heartbeat(seq=s, session_id=session)) for s in range(16, 4096)]
    polls = [encode(GetStatus(seq=s)) for s in range(4096, 8192)]
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = next_beat = time.monotonic()
    n = 0
    while not stopping and time.monotonic() < started + dwell_s + 0.5:
        timeout = max(0.0, next_beat - time.monotonic())
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            continue
        if ready:
            os.read(fd, 4096)
        if time.monotonic() >= next_beat:
            os.write(fd, beats[n % len(beats)])
            if n % 10 == 0:
                os.write(fd, polls[(n // 10) % len(polls)])
            n += 1
            next_beat += 0.1
    if not stopping:
        os.write(fd, STOP)
    time.sleep(0.05)
    os.close(fd)
    return 3 if stopping else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", required=True)
    parser.add_argument("--dwell", type=float, default=60.0)
    parser.add_argument("--session", type=int, default=0, help="(default: a random id)")
    args = parser.parse_args()
    sys.exit(main(args.port, args.dwell, args.session))
