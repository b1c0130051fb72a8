"""Finding and opening the port a unit is on.

Every port is opened with ``serial.serial_for_url``, so ``/dev/ttyUSB0``, ``COM3``,
``socket://``, ``rfc2217://``, ``spy://`` and estim's own ``sim://`` all work;
``sim://`` is found through ``estim.urlhandler`` like any pyserial URL handler,
without this module importing the simulator. Open errors become typed errors
whose one line says what to do.
"""

from __future__ import annotations

import errno
import logging
import os
import select
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial

from estim.clock import Clock
from estim.errors import BadPortURL, LinkError, PortBusy, PortNotFound

log = logging.getLogger("estim.ports")

#: how long a reader without ``cancel_read`` (socket://, rfc2217://) waits at most
_POLL_S = 0.02

if "estim.urlhandler" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("estim.urlhandler")


def open_port(url: str, *, baudrate: int = 115200) -> serial.SerialBase:
    """Open ``url`` for a host: 8N1 at ``baudrate``, exclusive (``flock``) for a
    local device whatever URL names it, blocking reads that ``cancel_read``
    interrupts where the port can. ``socket://`` and ``rfc2217://`` cannot be locked
    by the transport; ``estim.owner`` still refuses a second estim on them."""
    if not isinstance(url, str) or not url.strip():
        raise PortNotFound(f"no port given; {ports_hint()}")
    url = url.strip()
    try:
        port = serial.serial_for_url(url, do_not_open=True)
        port.baudrate = baudrate
        port.write_timeout = 1.0
        port.timeout = None if callable(getattr(port, "cancel_read", None)) else 0.05
        if isinstance(port, serial.Serial):  # a local device, by any URL (spy://, alt://)
            port.exclusive = True
        port.open()
    except (serial.SerialException, OSError, ValueError) as err:
        raise _open_error(url, err) from None
    return port


def port_clock(port: Any) -> Clock | None:
    """The clock an in-process port runs on, if it says so (``sim://`` does: a
    simulated unit on a ``ManualClock`` and a host on it must share that clock)."""
    clock = getattr(port, "estim_clock", None)
    return clock if clock is not None and callable(getattr(clock, "now", None)) else None


def _open_error(url: str, err: BaseException) -> LinkError:
    code = getattr(err, "errno", None)
    text = str(err).removeprefix(f"{url}: ")  # (said once, in front)
    if "sim option" in text:
        return BadPortURL(f"{url}: {text}")
    if code in (errno.ENOTTY, errno.EISDIR) or "Inappropriate ioctl" in text:
        return BadPortURL(f"{url} is not a serial port; {ports_hint()}")
    if code in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in text or "busy" in text.lower():
        return PortBusy(f"port {url} is busy: another program has it open; close it and try again")
    if code == errno.ENOENT or "No such file" in text:
        return PortNotFound(f"port {url} does not exist; {ports_hint()}")
    if code == errno.EACCES:
        return LinkError(f"no permission to open {url}; add your user to the 'dialout' group")
    if "protocol" in text and "not known" in text:
        return PortNotFound(f"{url}: unknown URL scheme; {ports_hint()}")
    if code == errno.ECONNREFUSED or "Connection refused" in text:
        return LinkError(
            f"nothing is listening at {url}: is the unit (or estim simulate --tcp) running?"
        )
    return LinkError(f"cannot open {url}: {text}")


#: USB vendor/product ids of units known to speak this protocol. Small on purpose:
#: add a unit here only once it passes the conformance vectors.
KNOWN_UNITS: dict[tuple[int, int], str] = {
    (0x1209, 0xE571): "estim reference unit (pid.codes test id)",
}


@dataclass(frozen=True)
class PortInfo:
    device: str
    description: str
    hwid: str
    vid: int | None
    pid: int | None
    #: the name of the known unit, if the USB ids match one
    known_unit: str | None


def list_ports() -> list[PortInfo]:
    """Serial ports on this machine, known estim units marked. ``sim://`` is always
    available too (a simulated unit), but is not listed."""
    from serial.tools import list_ports as serial_list_ports

    out = []
    for p in sorted(serial_list_ports.comports(), key=lambda p: p.device):
        ids = (p.vid, p.pid) if p.vid is not None and p.pid is not None else None
        out.append(
            PortInfo(
                device=p.device,
                description=p.description or "",
                hwid=p.hwid or "",
                vid=p.vid,
                pid=p.pid,
                known_unit=KNOWN_UNITS.get(ids) if ids else None,
            )
        )
    return out


def ports_hint() -> str:
    ports = [p.device for p in list_ports()]
    listed = ", ".join(ports) if ports else "none found"
    return f"serial ports here: {listed}; sim:// is a simulated unit"


def port_writer(port: Any) -> Callable[[bytes], None]:
    """A function ``write(data)`` that sends all of ``data`` or raises.

    On a POSIX serial port or pty: one ``os.write`` on the port's non-blocking fd,
    with pyserial (and its write timeout) only for what did not fit. pyserial's own
    ``write`` selects for writability after every write, even a complete one, which
    costs a frame more than the write itself. Elsewhere: ``port.write``."""
    if not (isinstance(getattr(port, "fd", None), int) and hasattr(port, "pipe_abort_write_r")):
        return port.write  # type: ignore[no-any-return]

    def posix(data: bytes) -> None:
        fd = port.fd  # None once closed: never write to a number the OS may have reused
        if fd is None:
            raise serial.PortNotOpenError()
        try:
            done = os.write(fd, data)
        except BlockingIOError:
            done = 0
        if done < len(data):
            port.write(data[done:])

    return posix


def write_frames(
    write: Callable[[bytes], None], frames: list[bytes], url: str
) -> BaseException | None:
    """Write ``frames`` in order with ``write``; the error that failed the port, if any
    (the frames after it are not written). Both runners write through this."""
    for frame in frames:
        try:
            write(frame)
        except serial.SerialTimeoutException:
            # Not a lost port: pyserial also says this when the process was frozen
            # during a write that went out whole. What goes unanswered is resent;
            # a port that really is stuck shows as a silent unit.
            log.warning("a write to %s timed out", url)
        except (serial.SerialException, OSError) as err:
            return err
    return None


def port_reader(port: Any, clock: Clock) -> Callable[[float | None], tuple[bytes, float]]:
    """A function ``read(timeout) -> (bytes, seconds waited on a silent line)``:
    whatever has arrived, or b"" at the timeout or when ``cancel_read`` wakes it.

    On a POSIX serial port or pty: one ``select`` and one ``os.read`` of the whole
    answer. Elsewhere through pyserial (``sim://``, ``socket://``, ...)."""
    fd = getattr(port, "fd", None)
    abort = getattr(port, "pipe_abort_read_r", None)
    if isinstance(fd, int) and isinstance(abort, int):

        def posix(timeout: float | None) -> tuple[bytes, float]:
            # Bytes already waiting: the line was not silent, however long this thread
            # then waits for the GIL (which a blocking select's "waited" would count).
            ready, _, _ = select.select([fd, abort], [], [], 0)
            waited = 0.0
            if not ready:
                before = clock.now()
                ready, _, _ = select.select([fd, abort], [], [], timeout)
                waited = clock.now() - before
            if abort in ready:
                os.read(abort, 1000)
            if fd not in ready:
                return b"", waited
            data = os.read(fd, 4096)
            if not data:
                raise serial.SerialException(
                    "device reports readiness to read but returned no data (device disconnected?)"
                )
            return data, waited

        return posix

    cancellable = callable(getattr(port, "cancel_read", None))

    def generic(timeout: float | None) -> tuple[bytes, float]:
        waiting = int(port.in_waiting)
        if waiting:
            return bytes(port.read(min(waiting, 4096))), 0.0
        cap = timeout if cancellable else min(_POLL_S, timeout if timeout is not None else _POLL_S)
        port.timeout = cap
        before = clock.now()
        data = bytes(port.read(1))
        waited = clock.now() - before
        more = int(port.in_waiting) if data else 0
        if more:
            data += bytes(port.read(min(more, 4096)))
        return data, waited

    return generic
