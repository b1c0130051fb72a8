"""Serving a simulated unit to other processes: on a pseudo-terminal or on TCP.

One thread, one ``select`` loop: bytes from the host go through the link model
into the unit, the unit's output goes back the same way, and the loop sleeps
exactly until the unit's next deadline. The unit runs on the real monotonic clock,
which on Linux is shared by every process, so the times in ``--json`` output can
be compared with a host's own ``time.monotonic()``.

The pty server keeps its own handle on the terminal's far side, so a host can
close the port and open it again (as after a crash) without the server seeing an
end of file; the unit keeps running meanwhile, and its watchdog acts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import tty
from collections.abc import Callable, Iterator
from types import FrameType

from estim.clock import REAL_CLOCK, Clock

from .line import Line
from .options import SimSpec
from .unit import LogEntry, SimulatedUnit

#: at most this many bytes are read from the host at once
_CHUNK = 4096


class _Endpoint:
    """Where the host's bytes come from and go to."""

    def fds(self) -> list[int]:
        raise NotImplementedError

    def readable(self, fd: int) -> bytes | None:
        """Bytes from the host, b"" if none now; None if the host went away."""
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _PtyEndpoint(_Endpoint):
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line editing, before any host opens it
        os.set_blocking(self.master, False)
        self.name = os.ttyname(self.slave)
        self.dropped = 0

    def fds(self) -> list[int]:
        return [self.master]

    def readable(self, fd: int) -> bytes | None:
        try:
            return os.read(self.master, _CHUNK)
        except BlockingIOError:
            return b""
        except OSError as err:
            if err.errno == errno.EIO:  # no one has the far side open (cannot happen: we do)
                return b""
            raise

    def send(self, data: bytes) -> None:
        try:
            written = os.write(self.master, data)
        except BlockingIOError:
            written = 0
        self.dropped += len(data) - written  # a line no one reads loses bytes, as a UART does

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


class _TcpEndpoint(_Endpoint):
    """One client at a time; a second connection is accepted and closed at once."""

    def __init__(self, host: str, port: int) -> None:
        self.listener = socket.create_server((host, port))
        self.listener.setblocking(False)
        bound = self.listener.getsockname()
        self.name = f"socket://{bound[0]}:{bound[1]}"
        self.client: socket.socket | None = None

    def fds(self) -> list[int]:
        fds = [self.listener.fileno()]
        if self.client is not None:
            fds.append(self.client.fileno())
        return fds

    def readable(self, fd: int) -> bytes | None:
        if fd == self.listener.fileno():
            with contextlib.suppress(BlockingIOError):
                conn, _ = self.listener.accept()
                if self.client is None:
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.client = conn
                else:
                    conn.close()  # busy: one host at a time, as on a serial port
            return b""
        assert self.client is not None
        try:
            data = self.client.recv(_CHUNK)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            self.client.close()
            self.client = None
            return None
        return data

    def send(self, data: bytes) -> None:
        if self.client is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            self.client.sendall(data)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.listener.close()


class UnitServer:
    """A simulated unit served on an endpoint until ``stop()`` or a signal."""

    def __init__(
        self,
        spec: SimSpec,
        endpoint: _Endpoint,
        *,
        clock: Clock = REAL_CLOCK,
        on_log: Callable[[LogEntry], None] | None = None,
    ) -> None:
        self.spec = spec
        self.endpoint = endpoint
        self.clock = clock
        self.unit: SimulatedUnit = spec.build_unit(clock)
        if on_log is not None:
            self.follow(on_log)
        self.unit.read_output()  # BOOTED went out before anyone was listening
        self.h2d, self.d2h = self._lines()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stopping = False

    def _lines(self) -> tuple[Line, Line]:
        return self.spec.lines(self.clock.now())

    def follow(self, on_log: Callable[[LogEntry], None]) -> None:
        """Call ``on_log`` with everything the unit did so far, then with each new entry."""
        for entry in self.unit.log:
            on_log(entry)
        self.unit.listeners.append(on_log)

    @property
    def name(self) -> str:
        return str(getattr(self.endpoint, "name", "?"))

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler or another thread)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def run(self) -> None:
        try:
            while not self._stopping:
                self._step()
        finally:
            self.endpoint.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _step(self) -> None:
        now = self.clock.now()
        times = [
            t
            for t in (self.unit.next_deadline(), self.h2d.next_due(), self.d2h.next_due())
            if t is not None
        ]
        timeout = max(0.0, min(times) - now) if times else None
        fds = [*self.endpoint.fds(), self._wake_r]
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            ready = []
        now = self.clock.now()
        for fd in ready:
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 64)
                continue
            data = self.endpoint.readable(fd)
            if data is None:  # the host disconnected: bytes in flight are lost with it
                self.h2d.clear()
                self.d2h.clear()
            elif data:
                self.h2d.send(data, now)
        arrived = self.h2d.take(now)
        if arrived:
            self.unit.receive(arrived)
        else:
            self.unit.poll()
        out = self.unit.read_output()
        if out:
            self.d2h.send(out, now)
        due = self.d2h.take(now)
        if due:
            self.endpoint.send(due)


def pty_server(
    spec: SimSpec, *, clock: Clock = REAL_CLOCK, on_log: Callable[[LogEntry], None] | None = None
) -> UnitServer:
    """A unit on a new pseudo-terminal; ``server.name`` is its path."""
    return UnitServer(spec, _PtyEndpoint(), clock=clock, on_log=on_log)


def tcp_server(
    spec: SimSpec,
    host: str,
    port: int,
    *,
    clock: Clock = REAL_CLOCK,
    on_log: Callable[[LogEntry], None] | None = None,
) -> UnitServer:
    """A unit on a TCP port (0 = any free one); ``server.name`` is its socket:// URL."""
    return UnitServer(spec, _TcpEndpoint(host, port), clock=clock, on_log=on_log)


@contextlib.contextmanager
def stop_on_signals(server: UnitServer) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP end the server's loop cleanly."""

    def handler(signum: int, frame: FrameType | None) -> None:
        server.stop()

    previous = {
        s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
