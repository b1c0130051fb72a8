"""A scripted serial port (pymeasure's ``expected_protocol`` idea): the test sees
every byte the host writes and decides what the "unit" answers, and when.

It stands in for the wire, not for the code under test: the driver's I/O thread,
its core and its retries all run for real on top of it.
"""

from __future__ import annotations

import queue
import threading

import serial

from estim.protocol import Decoder, Message


class ScriptedPort:
    def __init__(self) -> None:
        self.timeout: float | None = None
        self.is_open = True
        self.writes: queue.Queue[bytes] = queue.Queue()
        self._rx = bytearray()
        self._cond = threading.Condition()
        self._cancel = False
        self._broken: str | None = None
        self._decoder = Decoder()

    # the part of pyserial's SerialBase that estim's driver uses
    @property
    def in_waiting(self) -> int:
        with self._cond:
            return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        with self._cond:
            if not self._rx and not self._cancel and self._broken is None:
                self._cond.wait(self.timeout)  # a real port's read timeout (None: forever)
            if self._broken is not None:
                raise serial.SerialException(self._broken)
            self._cancel = False
            data = bytes(self._rx[:size])
            del self._rx[:size]
            return data

    def write(self, data: bytes) -> int:
        if self._broken is not None:
            raise serial.SerialException(self._broken)
        self.writes.put(bytes(data))
        return len(data)

    def cancel_read(self) -> None:
        with self._cond:
            self._cancel = True
            self._cond.notify_all()

    def close(self) -> None:
        self.is_open = False
        self.cancel_read()

    # the test's side
    def next_write(self, timeout: float = 5.0) -> bytes:
        return self.writes.get(timeout=timeout)

    def next_request(self, timeout: float = 5.0) -> Message:
        """The next whole message the host wrote (bare 0x00 bytes skipped)."""
        while True:
            messages = self._decoder.feed(self.next_write(timeout))
            if messages:
                assert len(messages) == 1, messages
                return messages[0]

    def answer(self, data: bytes) -> None:
        with self._cond:
            self._rx += data
            self._cond.notify_all()

    def break_(self, why: str = "device disconnected") -> None:
        with self._cond:
            self._broken = why
            self._cond.notify_all()
