"""Raw frames to and from a unit over any pyserial port, timed by an injected clock.

Not the host driver: nothing here retries, keeps a session alive or hides what the
unit sent. Every frame the unit sends is kept in ``log`` with the clock time it
was complete; a step of the suite marks the log, sends bytes and reads what came
back. The suite waits only by reading the port with a timeout, so on a ``sim://``
unit served on a ``ManualClock`` every wait is in virtual time.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from estim.clock import Clock
from estim.protocol import (
    Decoder,
    Event,
    FrameError,
    GetStatus,
    Kind,
    Message,
    Status,
    encode,
    message_to_dict,
)

#: how long the suite waits for an answer before it calls it missing. PROTOCOL.md 9
#: allows 5 ms (a host retries after 100 ms); the suite is patient, so that a busy
#: host machine does not pass for a slow unit. The response time has its own clause.
ANSWER_S = 0.5
#: UART default (PROTOCOL.md 1), for wire times when the port reports no baud rate
DEFAULT_BAUD = 115_200
#: session ids go up by a random step of 1..ID_STEP (PROTOCOL.md 10: increasing ids;
#: small steps, so a run of hundreds of sessions stays far below 2^32)
ID_STEP = 16

M = TypeVar("M", bound=Message)


class PortLost(Exception):
    """The port failed (unplugged, closed): the suite cannot go on."""


@dataclass(frozen=True, eq=False)
class Received:
    """A frame from the unit and the clock time it was complete."""

    t: float
    message: Message

    def as_dict(self) -> dict[str, Any]:
        return message_to_dict(self.message)


@dataclass(frozen=True)
class Exchange:
    """What a unit sent in reply to one step; ``fenced`` is False if the fence that
    closes the step was not answered either."""

    frames: list[Received]
    fenced: bool

    def dicts(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.frames]


@dataclass(frozen=True)
class Bracket:
    """A request sent between two GET_STATUS in one write, and the three answers."""

    sent: Message
    before: Status | None
    answer: Received | None
    after: Status | None

    @property
    def complete(self) -> bool:
        return None not in (self.before, self.answer, self.after)


class UnitPort:
    """See the module docstring. ``serial`` is an open pyserial port."""

    def __init__(self, serial: Any, clock: Clock, rng: random.Random) -> None:
        self.serial = serial
        self.clock = clock
        self.rng = rng
        self.decoder = Decoder()
        self.log: list[Received] = []
        #: frames from the unit the codec rejected: (time, reason)
        self.bad_frames: list[tuple[float, FrameError]] = []
        self._seq = rng.randrange(0x10000)
        #: the last session id used; every new one is above it (PROTOCOL.md 10)
        self.last_session_id = 0

    # -- numbering (PROTOCOL.md 10) ---------------------------------------------

    def next_seq(self) -> int:
        seq, self._seq = self._seq, (self._seq + 1) & 0xFFFF
        return seq

    def new_session_id(self) -> int:
        """An id above every one used so far: a unit refuses ids at or below its floor
        of ended sessions (PROTOCOL.md 10), so the suite's ids only grow."""
        self.last_session_id = min(
            self.last_session_id + self.rng.randrange(1, ID_STEP + 1), 0xFFFFFFFF
        )
        return self.last_session_id

    # -- bytes -------------------------------------------------------------------

    @property
    def baud(self) -> int:
        return int(getattr(self.serial, "baudrate", 0) or DEFAULT_BAUD)

    def wire_time(self, size: int) -> float:
        """Seconds ``size`` bytes take on a UART at the port's rate (8N1)."""
        return size * 10 / self.baud

    def write(self, data: bytes) -> float:
        """Send ``data``; the clock time once it is handed to the port."""
        try:
            self.serial.write(data)
        except (OSError, ValueError) as err:  # SerialException is an OSError
            raise PortLost(f"writing to the port failed: {err}") from None
        return self.clock.now()

    def send(self, message: M, seq: int | None = None) -> M:
        """Send ``message`` with ``seq`` (the next one if None); the message as sent."""
        sent = replace(message, seq=self.next_seq() if seq is None else seq)
        self.write(encode(sent))
        return sent

    def read(self, until: float, done: Callable[[], bool] | None = None) -> None:
        """Take what the unit sends until clock time ``until``, or until ``done()``."""
        while not (done is not None and done()):
            left = until - self.clock.now()
            try:
                self.serial.timeout = max(0.0, left)
                waiting = self.serial.in_waiting
                data = self.serial.read(max(1, waiting))
            except (OSError, ValueError) as err:
                raise PortLost(f"reading from the port failed: {err}") from None
            if data:
                self._feed(bytes(data))
            elif left <= 0:
                return

    def _feed(self, data: bytes) -> None:
        now = self.clock.now()
        self.decoder.receive(data, now)
        while True:
            try:
                message = self.decoder.next_message()
            except FrameError as err:
                self.bad_frames.append((now, err))
                continue
            if message is None:
                return
            self.log.append(Received(now, message))

    def drain(self) -> None:
        """Drop whatever the port holds from before (a unit talks to no one too)."""
        try:
            self.serial.reset_input_buffer()
        except (OSError, ValueError) as err:
            raise PortLost(f"the port failed: {err}") from None
        self.decoder = Decoder()

    # -- frames ------------------------------------------------------------------

    def answer(self, seq: int, since: int) -> Received | None:
        """The first response with ``seq`` in the log from index ``since``."""
        for r in self.log[since:]:
            if r.message.KIND == Kind.RESPONSE and r.message.seq == seq:
                return r
        return None

    def ask(
        self, message: Message, *, seq: int | None = None, wait: float = ANSWER_S
    ) -> Received | None:
        """Send ``message`` (with ``seq``, else the next) and return its answer, or None."""
        mark = len(self.log)
        sent = self.send(message, seq)
        self.read(self.clock.now() + wait, lambda: self.answer(sent.seq, mark) is not None)
        return self.answer(sent.seq, mark)

    def status(self) -> Status | None:
        got = self.ask(GetStatus())
        return got.message if got is not None and isinstance(got.message, Status) else None

    def bracketed(self, message: M, *, wait: float = ANSWER_S) -> Bracket:
        """Send GET_STATUS, ``message``, GET_STATUS in one write: the two STATUS
        answers read the unit's clock just before and just after it acted on
        ``message`` (PROTOCOL.md 9.2), whatever the host's scheduling."""
        before = replace(GetStatus(), seq=self.next_seq())
        sent = replace(message, seq=self.next_seq())
        after = replace(GetStatus(), seq=self.next_seq())
        mark = len(self.log)
        self.write(encode(before) + encode(sent) + encode(after))
        self.read(self.clock.now() + wait, lambda: self.answer(after.seq, mark) is not None)

        def status(seq: int) -> Status | None:
            got = self.answer(seq, mark)
            return got.message if got is not None and isinstance(got.message, Status) else None

        return Bracket(sent, status(before.seq), self.answer(sent.seq, mark), status(after.seq))

    def exchange(self, data: bytes, expect: int, *, wait: float = ANSWER_S) -> Exchange:
        """Send ``data`` and collect what the unit sends in reply: read until
        ``expect`` frames came (or ``wait`` passed), then send a GET_STATUS as a
        fence and keep what arrived before its answer. Units answer in order (10),
        so the fence catches a late or extra frame without waiting for silence."""
        mark = len(self.log)
        sent_at = self.write(data)
        if expect:
            self.read(sent_at + wait, lambda: len(self.log) - mark >= expect)
        fence = self.send(GetStatus())
        self.read(self.clock.now() + wait, lambda: self.answer(fence.seq, mark) is not None)
        got = self.answer(fence.seq, mark)
        if got is None:
            return Exchange(self.log[mark:], fenced=False)
        return Exchange(self.log[mark : self.index(got)], fenced=True)

    def index(self, frame: Received) -> int:
        """Where ``frame`` is in the log (frames compare by identity)."""
        return self.log.index(frame)

    def events(self, since: int = 0) -> list[Received]:
        return [r for r in self.log[since:] if isinstance(r.message, Event)]
