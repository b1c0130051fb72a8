"""The C reference unit as a separate process on a real pty, and a host talking to it
with pyserial and estim's codec."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serial

from estim.protocol import Heartbeat, Message, decode, encode, message_to_dict

#: the seq of the fence request (a HEARTBEAT naming session 0, which changes
#: nothing); no vector uses it
FENCE_SEQ = 0xFEED


class RefUnit:
    """``estim-ref-c --json OPTIONS``, its pty opened as a host would."""

    def __init__(self, binary: Path, *options: str, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [str(binary), "--json", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._buffer = b""
        self.lines: list[dict[str, Any]] = []
        try:
            first = self._readline(timeout)
            assert first is not None, self._stderr()
            assert first.startswith("PORT "), first
            self.port = first.split(" ", 1)[1]
            self.wait_for(lambda e: e["kind"] == "boot", timeout)
            # pyserial flushes the input at open, so BOOTED (sent before) is gone
            self.link = serial.Serial(self.port, timeout=0.05)
        except BaseException:
            self._kill()
            raise
        self._rx = b""
        self._queue: list[dict[str, Any]] = []  # frames read but not yet returned

    # --- the JSON log

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def _readline(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = end - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The next JSON line that satisfies ``predicate`` (all are kept in ``lines``)."""
        end = time.monotonic() + timeout
        while True:
            line = self._readline(max(0.0, end - time.monotonic()))
            if line is None:
                raise AssertionError(f"no such JSON line within {timeout} s: {self.lines[-5:]}")
            event: dict[str, Any] = json.loads(line)
            self.lines.append(event)
            if predicate(event):
                return event

    # --- the wire

    def send(self, data: bytes | Message) -> float:
        """Write bytes (or encode a message); returns time.monotonic() after the write."""
        self.link.write(data if isinstance(data, bytes) else encode(data))
        self.link.flush()
        return time.monotonic()

    def read(self) -> list[dict[str, Any]]:
        """Wait up to the link's timeout (50 ms) for bytes; return every whole frame
        received by then, decoded. Each must be a valid frame."""
        if self._queue:
            queued, self._queue = self._queue, []
            return queued
        self._rx += self.link.read(max(1, self.link.in_waiting)) or b""
        *wires, self._rx = self._rx.split(b"\0")
        return [message_to_dict(decode(w + b"\0")) for w in wires]  # raises on a bad frame

    def frames(
        self, until: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Every frame the unit sends up to and including the first for which
        ``until`` is true (none may follow it in the same read)."""
        got: list[dict[str, Any]] = []
        end = time.monotonic() + timeout
        while not any(until(m) for m in got):
            assert time.monotonic() < end, f"no awaited frame within {timeout} s; got {got}"
            got += self.read()
        return got

    def exchange(self, data: bytes | Message) -> list[dict[str, Any]]:
        """Send ``data`` and return everything the unit sends because of it: what
        comes before the answer to a fence request sent right after."""
        self.send(data)
        self.send(b"\0" + encode(Heartbeat(seq=FENCE_SEQ, session_id=0)))
        got = self.frames(lambda m: m["type"] == "ACK" and m["seq"] == FENCE_SEQ)
        fence = next(i for i, m in enumerate(got) if m["type"] == "ACK" and m["seq"] == FENCE_SEQ)
        self._queue = got[fence + 1 :]
        return got[:fence]

    # --- the end

    def close(self, sig: int = signal.SIGTERM) -> None:
        """End the process cleanly; it must exit 0 with nothing on stderr (no
        sanitizer report)."""
        self.link.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
            raise
        err = self._stderr()
        assert self.proc.stdout is not None
        self._buffer += self.proc.stdout.read()
        self.lines += [json.loads(line) for line in self._buffer.decode().splitlines()]
        self._buffer = b""
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        assert err == "", err  # a sanitizer report, or any complaint
        assert code == 0, code

    def __enter__(self) -> RefUnit:
        return self

    def _kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
            return
        self.link.close()
        self._kill()
