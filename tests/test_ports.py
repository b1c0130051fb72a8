"""``estim.ports.port_writer``: the direct write path on a real pseudo-terminal."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
import serial

from estim.ports import open_port, port_writer


@pytest.fixture
def pty() -> Iterator[tuple[int, serial.SerialBase]]:
    master, slave = os.openpty()
    port = open_port(os.ttyname(slave))
    os.close(slave)
    yield master, port
    port.close()
    os.close(master)


def _drain(master: int, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += os.read(master, 65536)
    return bytes(got)


def test_a_frame_arrives_whole(pty: tuple[int, serial.SerialBase]) -> None:
    master, port = pty
    write = port_writer(port)
    write(b"\x03\x01\x02\x00")
    assert _drain(master, 4) == b"\x03\x01\x02\x00"


def test_more_than_the_pty_buffer_holds_arrives_whole(pty: tuple[int, serial.SerialBase]) -> None:
    """os.write takes what fits; pyserial (with its write timeout) sends the rest."""
    master, port = pty
    data = bytes(range(1, 256)) * 1000  # 255 kB, several times a pty's buffer
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(_drain(master, len(data))))
    reader.start()
    port_writer(port)(data)
    reader.join(10)
    assert got == [data]


def test_a_closed_port_is_an_error_not_a_write_to_a_reused_fd(
    pty: tuple[int, serial.SerialBase],
) -> None:
    _, port = pty
    write = port_writer(port)
    port.close()
    r, w = os.pipe()  # the OS hands out the lowest free numbers: likely the old fd
    try:
        with pytest.raises(serial.PortNotOpenError):
            write(b"\x01\x00")
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            os.read(r, 10)
    finally:
        os.close(r)
        os.close(w)


def test_other_ports_write_through_pyserial() -> None:
    port = serial.serial_for_url("loop://")
    try:
        write = port_writer(port)
        assert write == port.write
        write(b"abc")
        assert port.read(3) == b"abc"
    finally:
        port.close()
