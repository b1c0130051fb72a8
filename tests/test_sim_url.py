"""sim:// as a real pyserial URL handler, and the pytest plugin's fixtures."""

from __future__ import annotations

import errno
import importlib
import subprocess
import sys
from dataclasses import replace

import pytest
import serial

from estim.clock import ManualClock
from estim.protocol import (
    Decoder,
    DeviceInfo,
    Heartbeat,
    Hello,
    Message,
    Stop,
    encode,
)
from estim.sim import SimulatedUnit, serve

HELLO = encode(Hello(seq=1, min_version=1, max_version=1))


def test_the_handler_module_imports() -> None:
    # pyserial reports an ImportError inside a handler as "protocol not known"
    module = importlib.import_module("estim.urlhandler.protocol_sim")
    assert hasattr(module, "Serial")
    assert "estim.urlhandler" in serial.protocol_handler_packages


def test_the_driver_finds_sim_urls_without_importing_the_simulator() -> None:
    code = (
        "import sys, estim.device; assert 'estim.sim' not in sys.modules, 'imported'; "
        "import serial; serial.serial_for_url('sim://').close(); "
        "assert 'estim.sim' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def read_messages(
    port: serial.SerialBase, count: int, decoder: Decoder | None = None
) -> list[Message]:
    decoder = decoder or Decoder()
    out: list[Message] = []
    while len(out) < count:
        data = port.read(max(1, port.in_waiting))
        assert data, f"timed out with {out}"
        out += decoder.feed(data)
    return out


def test_fresh_unit_from_url_options() -> None:
    with serial.serial_for_url("sim://?channels=4&seed=1&serial=SIM-42", timeout=2.0) as port:
        port.write(HELLO)
        (info,) = read_messages(port, 1)
    assert isinstance(info, DeviceInfo)
    assert (info.channel_count, info.serial_number, info.flags & 1) == (4, "SIM-42", 1)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sim://?channels=9", "channels=9 is outside 1..8"),
        ("sim://?bogus=1", "unknown sim option 'bogus'"),
        ("sim://?drop=2", "drop=2 is outside 0..1"),
        ("sim://?lead_off_at=abc", "lead_off_at='abc' is not a number"),
        ("sim://?lead_off_at=5:7", "channel 7 does not exist"),
        ("sim://?impedance_at=5", "expected SECONDS:CHANNEL:OHM"),
        ("sim://?channels=2&channels=3", "given 2 times"),
        ("sim://nosuchunit", "no simulated unit named 'nosuchunit'"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(serial.SerialException, match=message):
        serial.serial_for_url(url)


def test_served_unit_shares_its_manual_clock(
    estim_unit: SimulatedUnit, estim_url: str, estim_clock: ManualClock
) -> None:
    with serial.serial_for_url(estim_url, timeout=0.25) as port:
        assert port.estim_clock is estim_clock
        port.write(HELLO)
        (info,) = read_messages(port, 1)
        assert isinstance(info, DeviceInfo)
        t = estim_clock.now()
        assert port.read(1) == b""  # a read timeout is virtual time
        assert estim_clock.now() == pytest.approx(t + 0.25)


def test_a_served_unit_takes_one_connection_at_a_time(estim_url: str) -> None:
    with serial.serial_for_url(estim_url):
        with pytest.raises(serial.SerialException) as caught:
            serial.serial_for_url(estim_url)
        assert caught.value.errno == errno.EBUSY
    with serial.serial_for_url(estim_url):
        pass  # free again


def test_unplugging_fails_the_host_at_once(estim_url: str) -> None:
    with serial.serial_for_url(estim_url, timeout=1.0) as port:
        port.sim_connection.unplug()
        with pytest.raises(serial.SerialException, match="disconnected"):
            port.read(1)
        with pytest.raises(serial.SerialException, match="disconnected"):
            port.write(HELLO)


def test_a_cut_line_drops_requests() -> None:
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url, serial.serial_for_url(url + "?drop=1", timeout=1.0) as port:
        port.write(HELLO)
        assert port.read(1) == b""


def test_pacing_at_9600_baud_delays_the_reply_by_its_wire_time() -> None:
    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url, serial.serial_for_url(url + "?baud=9600", timeout=5.0) as port:
        t0 = clock.now()
        port.write(encode(Heartbeat(seq=3, session_id=0)))
        read_messages(port, 1)
        request_bytes = len(encode(Heartbeat(seq=3, session_id=0)))
        ack_bytes = 16
        assert clock.now() - t0 == pytest.approx((request_bytes + ack_bytes) * 10 / 9600, abs=1e-6)


def test_the_unit_runs_on_after_the_host_disconnects() -> None:
    from estim.protocol import Fault

    from .harness import configure, start

    clock = ManualClock()
    unit = SimulatedUnit(clock=clock)
    with serve(unit) as url:
        with serial.serial_for_url(url, timeout=1.0) as port:
            port.write(encode(replace(configure(), seq=1)))
            port.write(encode(replace(start(), seq=2)))
            read_messages(port, 3)
        assert unit.state.name == "RAMPING_UP"
        clock.advance(1.0)  # the host is gone: its watchdog acts
        assert unit.faults == {Fault.WATCHDOG}
        assert unit.events("output_off")[-1].t == pytest.approx(0.5)


@pytest.mark.estim_unit(channels=3, serial_number="MARKED")
def test_the_marker_configures_the_fixture_unit(estim_unit: SimulatedUnit) -> None:
    assert estim_unit.config.channels == 3
    assert estim_unit.config.serial_number == "MARKED"


def test_estim_port_skips_without_the_option_and_is_given_with_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        def test_on_hardware(estim_port):
            assert estim_port == "/dev/ttyFAKE0"
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(skipped=1)
    pytester.runpytest("-p", "no:cacheprovider", "--estim-port", "/dev/ttyFAKE0").assert_outcomes(
        passed=1
    )


def test_stop_frame_over_the_url(estim_url: str) -> None:
    with serial.serial_for_url(estim_url, timeout=1.0) as port:
        port.write(encode(Stop(seq=9, reason=1)))
        (ack,) = read_messages(port, 1)
    assert ack.seq == 9
