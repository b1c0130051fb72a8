"""The host's side of one link to a unit, sans I/O (in the shape of h11's
``Connection``): sequence numbers, pending requests, retransmissions of the same
bytes, the event counter, and when the unit was last heard.

    conn = HostConnection(first_seq=random.randrange(0x10000))
    request, wire = conn.send(GetStatus(), now)   # write ``wire`` to the port
    for item in conn.receive(data, now):          # bytes read from the port
        ...                                       # Answer | Event | EventGap
    wires, expired = conn.poll(now)               # at conn.next_deadline()

Nothing here reads a clock, sleeps, locks, logs or touches a port: the caller
passes the time in and writes the bytes out, so a threaded runner and an asyncio
runner drive the same object.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .constants import INTER_BYTE_GAP_S, Kind, MessageType
from .frame import Decoder, encode_payload, encode_with_payload
from .messages import Event, Message

#: PROTOCOL.md 9: a host waits 100 ms (plus wire time) before it resends
RESPONSE_TIMEOUT_S = 0.100
#: PROTOCOL.md 9: an unanswered request is resent at most twice
RETRIES = 2

Retries = int | Literal["forever"] | None


@dataclass(frozen=True)
class Answer:
    """The unit's response to one of our requests (ACK, NACK, DEVICE_INFO, STATUS)."""

    request: Message
    response: Message


@dataclass(frozen=True)
class Expired:
    """A request that got no answer after every attempt."""

    request: Message
    attempts: int


@dataclass(frozen=True)
class EventGap:
    """Events were lost on the way: the unit's counter jumped from ``expected`` to ``received``."""

    expected: int
    received: int


Incoming = Answer | Event | EventGap


#: how many distinct payloads a connection keeps (a session sends a handful)
_KEPT_PAYLOADS = 32


@dataclass
class ConnectionStats:
    requests: int = 0
    #: frames from the unit that passed every check
    valid_frames: int = 0
    retries: int = 0
    rejected_frames: int = 0
    stale_answers: int = 0
    events: int = 0
    missed_events: int = 0


class _Pending:
    __slots__ = ("attempts", "due", "request", "timeout", "tries", "wire")

    def __init__(
        self, request: Message, wire: bytes, timeout: float, tries: int | None, due: float
    ) -> None:
        self.request = request
        self.wire = wire
        self.timeout = timeout
        #: attempts allowed in all, None for "until answered or cancelled"
        self.tries = tries
        self.attempts = 1
        self.due = due


class HostConnection:
    """One link's protocol state on the host. See the module docstring."""

    def __init__(
        self,
        *,
        first_seq: int,
        response_timeout: float = RESPONSE_TIMEOUT_S,
        retries: int = RETRIES,
        gap_s: float = INTER_BYTE_GAP_S,
    ) -> None:
        self.response_timeout = response_timeout
        self.retries = retries
        self.stats = ConnectionStats()
        #: the time of the last valid frame from the unit (None until one arrives)
        self.last_rx: float | None = None
        self._decoder = Decoder(gap_s=gap_s)
        self._seq = first_seq & 0xFFFF
        self._pending: dict[int, _Pending] = {}
        #: payloads by the message asked for (a payload does not depend on seq): a
        #: session's HEARTBEAT is encoded once, then only its header and CRC per send
        self._payloads: dict[Message, bytes] = {}
        self._next_event: int | None = None

    # -- sending -------------------------------------------------------------------------

    def send(
        self,
        message: Message,
        now: float,
        *,
        retries: Retries = None,
        timeout: float | None = None,
    ) -> tuple[Message, bytes]:
        """Give ``message`` the next free sequence number; returns it and its bytes.

        It is resent ``retries`` times (default: the connection's) with the same
        bytes, ``timeout`` seconds apart, or until answered or cancelled if
        ``retries`` is ``"forever"`` (STOP)."""
        while self._seq in self._pending:
            self._seq = (self._seq + 1) & 0xFFFF
        payload = self._payloads.get(message)
        if payload is None:
            payload = encode_payload(message)
            if len(self._payloads) >= _KEPT_PAYLOADS:
                self._payloads.clear()
            self._payloads[message] = payload
        request = replace(message, seq=self._seq)
        self._seq = (self._seq + 1) & 0xFFFF
        wire = encode_with_payload(request.KIND, request.seq, request.TYPE, payload)
        wait = self.response_timeout if timeout is None else timeout
        tries = None if retries == "forever" else 1 + (self.retries if retries is None else retries)
        if request.TYPE == MessageType.STOP:
            self._no_more_starts()
        self._pending[request.seq] = _Pending(request, wire, wait, tries, now + wait)
        self.stats.requests += 1
        return request, wire

    def cancel(self, seq: int) -> None:
        """Forget a pending request: it is not resent, and its answer is ignored."""
        self._pending.pop(seq, None)

    def _no_more_starts(self) -> None:
        """A STOP is going out: no START still pending is sent again (PROTOCOL.md 9).
        One lost on the line and resent after the STOP would start output after the
        unit acknowledged the stop. Each is still matched to its answer until it would
        have been resent, then expires."""
        for p in self._pending.values():
            if p.request.TYPE == MessageType.START:
                p.tries = p.attempts

    def poll(self, now: float) -> tuple[list[bytes], list[Expired]]:
        """What time alone does: the bytes of every retransmission due, and the
        requests that have used up their attempts (forgotten from now on)."""
        wires: list[bytes] = []
        expired: list[Expired] = []
        for seq, p in list(self._pending.items()):
            if p.due > now:
                continue
            if p.tries is not None and p.attempts >= p.tries:
                del self._pending[seq]
                expired.append(Expired(p.request, p.attempts))
                continue
            p.attempts += 1
            p.due = now + p.timeout
            self.stats.retries += 1
            wires.append(p.wire)
        return wires, expired

    def next_deadline(self) -> float | None:
        """When ``poll`` must next run (a resend or an expiry), or None."""
        return min((p.due for p in self._pending.values()), default=None)

    # -- receiving -----------------------------------------------------------------------

    def receive(self, data: bytes, now: float, *, line_time: float | None = None) -> list[Incoming]:
        """Bytes from the unit, in order; returns what they complete.

        ``line_time`` is the clock the inter-byte gap rule runs on: it must advance
        only while the line was really silent (a reader starved of CPU finds bytes
        that arrived long ago and were never apart). Without it, ``now`` is used."""
        out: list[Incoming] = []
        for message in self._decoder.feed(data, now if line_time is None else line_time):
            self.last_rx = now
            self.stats.valid_frames += 1
            if message.KIND == Kind.RESPONSE:
                pending = self._pending.pop(message.seq, None)
                if pending is None:
                    self.stats.stale_answers += 1
                    continue
                out.append(Answer(pending.request, message))
            elif isinstance(message, Event):
                self.stats.events += 1
                # PROTOCOL.md 10: the first event a host sees is its starting point
                if self._next_event is not None and message.seq != self._next_event:
                    self.stats.missed_events += (message.seq - self._next_event) & 0xFFFF
                    out.append(EventGap(self._next_event, message.seq))
                self._next_event = (message.seq + 1) & 0xFFFF
                out.append(message)
        self.stats.rejected_frames = self._decoder.rejected
        return out
