"""``estim simulate`` as another process: on a pseudo-terminal and on TCP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import serial

from estim.protocol import (
    Ack,
    Decoder,
    DeviceInfo,
    Heartbeat,
    Hello,
    Kind,
    Message,
    encode,
)

from .harness import configure, start
from .procs import SimProcess


def exchange(port: serial.SerialBase, *requests: Message) -> list[Message]:
    """Send requests; return their answers (events that arrive meanwhile are skipped)."""
    port.write(b"\x00" + b"".join(encode(r) for r in requests))
    decoder = Decoder()
    out: list[Message] = []
    end = time.monotonic() + 5.0
    while len(out) < len(requests) and time.monotonic() < end:
        out += [
            m for m in decoder.feed(port.read(max(1, port.in_waiting))) if m.KIND == Kind.RESPONSE
        ]
    return out


def test_pty_serves_device_info_to_a_real_serial_client() -> None:
    with SimProcess("--pty", "--quiet") as sim:
        assert sim.port.startswith("/dev/pts/")
        with serial.Serial(sim.port, 115200, timeout=2.0) as port:
            (info,) = exchange(port, Hello(seq=1, min_version=1, max_version=1))
        assert isinstance(info, DeviceInfo)
        assert info.flags & 1
        assert sim.stop() == 0


def test_a_host_can_close_and_reopen_the_pty() -> None:
    with SimProcess("--pty", "--quiet") as sim:
        for i in range(3):
            with serial.Serial(sim.port, 115200, timeout=2.0) as port:
                (ack,) = exchange(port, Heartbeat(seq=i, session_id=0))
                assert isinstance(ack, Ack)
        assert sim.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_stop_the_server_cleanly(sig: int) -> None:
    with SimProcess("--pty", "--quiet") as sim:
        assert sim.stop(sig) == 0


def test_json_log_shows_the_watchdog_acting_within_its_period() -> None:
    with SimProcess("--pty", "--json", "channels=2") as sim:
        assert sim.wait_for(lambda e: e["kind"] == "boot")
        with serial.Serial(sim.port, 115200, timeout=2.0) as port:
            answers = exchange(port, configure(seq=1), start(seq=2, ramp_ms=2000))
            assert [type(a).__name__ for a in answers] == ["Ack", "Ack"]
            last_frame_host = time.monotonic()  # nothing is sent after this: the host "dies"
            on = sim.wait_for(lambda e: e["kind"] == "output_on")
            off = sim.wait_for(lambda e: e["kind"] == "output_off")
            watchdog = next(e for e in map(json.loads, sim.lines[1:]) if e["kind"] == "watchdog")
        assert off["reason"] == "fault:WATCHDOG"
        assert off["t"] - watchdog["last_frame"] == pytest.approx(0.5, abs=1e-6)
        # the unit's clock is the machine's monotonic clock: compare with the host's
        assert off["t"] - last_frame_host <= 0.5
        assert off["t"] > on["t"]
        assert sim.stop() == 0


def test_tcp_serves_socket_clients_one_at_a_time() -> None:
    with SimProcess("--tcp", "127.0.0.1:0", "--quiet") as sim:
        assert sim.port.startswith("socket://127.0.0.1:")
        with serial.serial_for_url(sim.port, timeout=2.0) as port:
            (info,) = exchange(port, Hello(seq=1, min_version=1, max_version=1))
            assert isinstance(info, DeviceInfo)
            second = serial.serial_for_url(sim.port, timeout=5.0)
            try:
                # the second client is accepted and closed at once: busy
                with pytest.raises(serial.SerialException, match="disconnected"):
                    second.read(1)
            finally:
                second.close()
        with serial.serial_for_url(sim.port, timeout=2.0) as port:
            (info,) = exchange(port, Hello(seq=4, min_version=1, max_version=1))
            assert isinstance(info, DeviceInfo)
        assert sim.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["channels=0"], "channels=0 is outside 1..8"),
        (["nonsense"], "is not KEY=VALUE"),
        (["--tcp", "127.0.0.1:99999"], "PORT must be a number"),
        (["--pty", "--tcp", "7000"], "choose one of --pty and --tcp"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "estim", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""
