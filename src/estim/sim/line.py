"""One direction of a simulated serial line: what happens to bytes in transit.

A ``Line`` takes the bytes written at one end and hands them out at the other,
after the link manipulator (drop, corrupt, duplicate, delay; at seeded rates, or
inside time windows) and, optionally, after the time the bytes take on the wire
at a baud rate. Bytes never overtake each other, as on a real UART. Sans I/O:
the caller passes the time in.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LinkFaults:
    """Per-byte probabilities, and a delay applied to whole writes."""

    drop: float = 0.0
    corrupt: float = 0.0
    duplicate: float = 0.0
    #: probability that a write is held back by ``delay_s``
    delay: float = 0.0
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("drop", "corrupt", "duplicate", "delay"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"link fault {name}={value} is not a probability (0..1)")
        if not 0.0 <= self.delay_s <= 60.0:
            raise ValueError(f"link delay_s={self.delay_s} is outside 0..60 s")

    @property
    def active(self) -> bool:
        return any((self.drop, self.corrupt, self.duplicate, self.delay))


@dataclass(frozen=True)
class FaultWindow:
    """``faults`` apply instead of the line's own from clock time ``start`` until ``end``."""

    start: float
    end: float
    faults: LinkFaults


@dataclass
class LineStats:
    sent: int = 0
    dropped: int = 0
    corrupted: int = 0
    duplicated: int = 0
    delayed_writes: int = 0


@dataclass
class Line:
    faults: LinkFaults = field(default_factory=LinkFaults)
    windows: tuple[FaultWindow, ...] = ()
    #: 0 = no pacing; else bytes take 10 bits each at this rate (8N1)
    baud: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        self.stats = LineStats()
        self._random = random.Random(self.seed)
        self._queue: deque[tuple[float, bytes]] = deque()
        self._free_at = 0.0  # when the wire finishes sending what it has
        self._last_due = 0.0

    def wire_time(self, size: int) -> float:
        return 0.0 if not self.baud else size * 10 / self.baud

    def _faults_at(self, now: float) -> LinkFaults:
        for window in self.windows:
            if window.start <= now < window.end:
                return window.faults
        return self.faults

    def send(self, data: bytes, now: float) -> None:
        if not data:
            return
        self.stats.sent += len(data)
        faults = self._faults_at(now)
        if faults.active:
            data = self._mangle(data, faults)
        start = max(now, self._free_at)
        due = start + self.wire_time(len(data))
        self._free_at = due
        if faults.delay and self._random.random() < faults.delay:
            due += faults.delay_s
            self.stats.delayed_writes += 1
        due = max(due, self._last_due)  # no overtaking
        self._last_due = due
        if data:
            self._queue.append((due, data))

    def _mangle(self, data: bytes, faults: LinkFaults) -> bytes:
        out = bytearray()
        rnd = self._random.random
        for byte in data:
            if faults.drop and rnd() < faults.drop:
                self.stats.dropped += 1
                continue
            if faults.corrupt and rnd() < faults.corrupt:
                byte ^= self._random.randint(1, 255)
                self.stats.corrupted += 1
            out.append(byte)
            if faults.duplicate and rnd() < faults.duplicate:
                out.append(byte)
                self.stats.duplicated += 1
        return bytes(out)

    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def take(self, now: float, limit: int | None = None) -> bytes:
        """The bytes that have arrived by ``now`` (at most ``limit``)."""
        out = bytearray()
        while self._queue and self._queue[0][0] <= now:
            due, chunk = self._queue[0]
            room = None if limit is None else limit - len(out)
            if room is not None and room < len(chunk):
                out += chunk[:room]
                self._queue[0] = (due, chunk[room:])
                break
            out += chunk
            self._queue.popleft()
        return bytes(out)

    @property
    def pending(self) -> int:
        return sum(len(chunk) for _, chunk in self._queue)

    def clear(self) -> None:
        self._queue.clear()
