"""Running ``estim simulate`` as a separate process, the way a user would."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


class SimProcess:
    """``estim simulate ARGS``, or another unit served the same way (the C reference
    unit: ``command=[binary]``); ``port`` is what its first line names."""

    def __init__(self, *args: str, timeout: float = 20.0, command: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "estim", "simulate"]), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buffer = b""
        self.lines: list[str] = []
        first = self.readline(timeout)
        assert first is not None, f"no PORT line; stderr: {self._stderr()}"
        assert first.startswith("PORT "), first
        self.port = first.split(" ", 1)[1]

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def readline(self, timeout: float) -> str | None:
        """The next stdout line, or None if none came within ``timeout`` seconds."""
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
        text = line.decode()
        self.lines.append(text)
        return text

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The next JSON event line that satisfies ``predicate`` (event-driven, not a sleep)."""
        end = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, end - time.monotonic()))
            if line is None:
                raise AssertionError(f"no matching event within {timeout} s; saw {self.lines[-5:]}")
            event: dict[str, Any] = json.loads(line)
            if predicate(event):
                return event

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        finally:
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.stop()
