"""The driver over the real pyserial path: ``estim simulate --pty`` in another process."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from estim.device import connect
from estim.errors import DeviceError, LinkLost
from estim.plan import ChannelPlan
from estim.protocol import ErrorCode, State, StopReason

from .procs import SimProcess

CH1 = ChannelPlan(channel=1, frequency_hz=2, pulse_width_us=250, amplitude_ma=12)


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    with SimProcess("--pty", "--json") as process:
        yield process


def test_handshake_operations_and_nack_over_a_pty(sim: SimProcess) -> None:
    with connect(sim.port) as device:
        assert device.info.simulated
        assert device.info.channels == 2
        device.configure(CH1)
        with pytest.raises(DeviceError) as caught:
            device.start_output(session_id=5, dwell_s=601, ramp_s=5, watchdog_s=0.5, channels=[1])
        assert caught.value.code == ErrorCode.OUT_OF_RANGE
        assert (
            device.start_output(session_id=5, dwell_s=60, ramp_s=2, watchdog_s=0.5, channels=[1])
            == State.RAMPING_UP
        )
        assert device.heartbeat(5) in (State.RAMPING_UP, State.RUNNING)
        assert device.status().session_id == 5
        assert device.stop(StopReason.OPERATOR) == State.IDLE
        off = sim.wait_for(lambda e: e["kind"] == "output_off")
        assert off["reason"] == "stop"
    assert sim.stop() == 0


def test_stop_from_another_thread_while_heartbeats_run(sim: SimProcess) -> None:
    with connect(sim.port) as device:
        device.configure(CH1)
        device.start_output(session_id=6, dwell_s=60, ramp_s=2, watchdog_s=0.5, channels=[1])
        done = threading.Event()
        errors: list[BaseException] = []

        def beat() -> None:
            while not done.is_set():
                try:
                    device.heartbeat(6)
                except DeviceError:  # the session has ended: the unit says so
                    device.heartbeat(0)
                except Exception as err:
                    errors.append(err)
                    return

        thread = threading.Thread(target=beat)
        thread.start()
        sim.wait_for(lambda e: e["kind"] == "output_on")
        assert device.stop(StopReason.OPERATOR) == State.IDLE
        done.set()
        thread.join(5)
        assert errors == []
        assert sim.wait_for(lambda e: e["kind"] == "output_off")["reason"] == "stop"


def test_the_simulator_vanishing_is_link_lost_not_a_hang(sim: SimProcess) -> None:
    with connect(sim.port) as device:
        device.configure(CH1)
        device.start_output(session_id=7, dwell_s=60, ramp_s=2, watchdog_s=0.5, channels=[1])
        device.heartbeat(7)
        sim.proc.send_signal(signal.SIGKILL)
        sim.proc.wait(5)
        started = time.monotonic()

        def beat_until_it_fails() -> None:
            while True:
                device.heartbeat(7)

        with pytest.raises(LinkLost):
            beat_until_it_fails()
        # within the response deadline and its retries (3 x 100 ms), never a hang
        assert time.monotonic() - started < 1.0
