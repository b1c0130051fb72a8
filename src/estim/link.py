"""The link to one unit: one reader thread per port, requests matched to answers by
sequence number, bounded retries, and unsolicited events delivered in order.

There is no request queue: every request is written at once (writes are
serialised by a lock held only for the write itself) and waits for its own
answer, so a STOP never waits behind another request. A retry resends the same
bytes with the same sequence number, so the unit gives it no second effect.

The link is lost, for good, when the port fails (an exception, the device gone,
end of file) or when a request gets no answer after its retries. Every waiter
then raises ``LinkLost`` at once and subscribers receive ``LinkDown``; from then
on the unit's own watchdog is what turns output off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import serial

from estim.clock import Clock, Signal
from estim.errors import LinkLost
from estim.protocol import (
    Decoder,
    Event,
    Kind,
    Message,
    Stop,
    StopReason,
    encode,
)

log = logging.getLogger("estim.link")

#: default time to wait for an answer before resending (PROTOCOL.md section 9)
RESPONSE_TIMEOUT_S = 0.1
#: resends after the first attempt
RETRIES = 2


@dataclass(frozen=True)
class EventGap:
    """Events were lost on the way: the unit's counter jumped from ``expected`` to ``received``."""

    expected: int
    received: int


@dataclass(frozen=True)
class LinkDown:
    """The link is lost; no more events will come."""

    error: LinkLost


Notification = Event | EventGap | LinkDown
Subscriber = Callable[[Notification], None]


class _Pending:
    __slots__ = ("answer", "done", "on_answer", "request", "sent_at")

    def __init__(
        self,
        request: Message,
        done: Signal | None,
        on_answer: Callable[[Message], None] | None = None,
        sent_at: float = 0.0,
    ) -> None:
        self.request = request
        self.done = done
        self.on_answer = on_answer
        self.sent_at = sent_at
        self.answer: Message | None = None


@dataclass
class LinkStats:
    requests: int = 0
    retries: int = 0
    rejected_frames: int = 0
    stale_answers: int = 0
    events: int = 0
    missed_events: int = 0


class Link:
    """A unit on an open pyserial port. ``close()`` stops the reader and closes the port."""

    def __init__(
        self,
        port: serial.SerialBase,
        clock: Clock,
        *,
        name: str,
        response_timeout: float = RESPONSE_TIMEOUT_S,
        retries: int = RETRIES,
        first_seq: int | None = None,
    ) -> None:
        self.port = port
        self.clock = clock
        self.name = name
        self.response_timeout = response_timeout
        self.retries = retries
        self.stats = LinkStats()
        #: clock time of the last valid frame from the unit (None until one arrives)
        self.last_rx: float | None = None
        self._decoder = Decoder()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        # PROTOCOL.md 10: a new host starts at random (tests may fix it)
        self._seq = random.randrange(0x10000) if first_seq is None else first_seq
        self._subscribers: list[Subscriber] = []
        self._next_event: int | None = None
        self._lost: LinkLost | None = None
        self._closing = False
        self._reader = clock.start_thread(self._read_loop, name=f"estim-reader {name}")

    # -- sending -----------------------------------------------------------------------

    @property
    def lost(self) -> LinkLost | None:
        return self._lost

    def request(
        self, message: Message, *, timeout: float | None = None, retries: int | None = None
    ) -> Message:
        """Send ``message``; return its answer. Raises ``LinkLost``."""
        pending = self._register(message)
        tries = 1 + (self.retries if retries is None else retries)
        wait = self.response_timeout if timeout is None else timeout
        try:
            for attempt in range(tries):
                if attempt:
                    self.stats.retries += 1
                self._write(encode(pending.request))
                if self._signal(pending).wait(wait):
                    return self._answer(pending)
            error = LinkLost(
                f"no answer from the unit on {self.name} to {message.TYPE.name} after "
                f"{tries} attempts of {wait * 1000:.0f} ms; check the cable and the unit's power"
            )
            self._fail(error)
            raise error
        finally:
            with self._lock:
                self._pending.pop(pending.request.seq, None)

    def stop(self, reason: int, *, give_up_after: float) -> Message:
        """Send STOP, resending until it is acknowledged; if the unit stays silent for
        ``give_up_after`` seconds (its watchdog period: by then it has turned output
        off by itself), raise ``LinkLost``. Raises at once if the link is already lost."""
        if self._lost is not None:
            raise self._lost
        pending = self._register(Stop(reason=reason))
        wire = encode(pending.request)
        started = self.clock.now()
        try:
            while True:
                self._write(wire)
                if self._signal(pending).wait(self.response_timeout):
                    return self._answer(pending)
                self.stats.retries += 1
                heard = max(self.last_rx or started, started)
                if self.clock.now() - heard >= give_up_after:
                    error = LinkLost(
                        f"STOP was not acknowledged by the unit on {self.name}: nothing heard for "
                        f"{give_up_after:g} s; its watchdog turns output off"
                    )
                    self._fail(error)
                    raise error
        finally:
            with self._lock:
                self._pending.pop(pending.request.seq, None)

    def send(self, message: Message, on_answer: Callable[[Message], None]) -> None:
        """Send ``message`` once without waiting; ``on_answer`` gets its answer on the
        reader thread (it must not block). For a stream of requests where the next
        one follows anyway, heartbeats: the sender's loop need not wake for each answer.
        The caller watches ``last_rx`` to know the unit is still there."""
        pending = self._register(message, on_answer=on_answer)
        self._write(encode(pending.request))

    def fail(self, error: LinkLost) -> None:
        """Declare the link lost (a caller that watches ``last_rx`` saw it go silent)."""
        self._fail(error)

    def _register(
        self, message: Message, on_answer: Callable[[Message], None] | None = None
    ) -> _Pending:
        with self._lock:
            if self._lost is not None:
                raise self._lost
            if self._closing:
                raise LinkLost(f"the link to {self.name} is closed")
            now = self.clock.now()
            if on_answer is not None:  # answers to fire-and-forget requests that never came
                stale = [
                    s for s, p in self._pending.items() if p.done is None and now - p.sent_at > 2.0
                ]
                for seq in stale:
                    del self._pending[seq]
            while self._seq in self._pending:
                self._seq = (self._seq + 1) & 0xFFFF
            seq = self._seq
            self._seq = (self._seq + 1) & 0xFFFF
            done = None if on_answer is not None else self.clock.signal()
            pending = _Pending(replace(message, seq=seq), done, on_answer, now)
            self._pending[seq] = pending
            self.stats.requests += 1
            return pending

    @staticmethod
    def _signal(pending: _Pending) -> Signal:
        assert pending.done is not None
        return pending.done

    def _answer(self, pending: _Pending) -> Message:
        if pending.answer is None:  # woken by a failure
            assert self._lost is not None
            raise self._lost
        return pending.answer

    def _write(self, data: bytes) -> None:
        with self._write_lock:
            if self._lost is not None:
                raise self._lost
            try:
                self.port.write(data)
                return
            except (serial.SerialException, OSError) as err:
                error = LinkLost(f"cannot write to {self.name}: {err}")
        self._fail(error)  # outside the write lock: failing writes a last STOP
        raise error

    def send_raw(self, data: bytes) -> None:
        """Bytes outside any request (a leading 0x00 that ends a partial frame)."""
        self._write(data)

    # -- receiving -----------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback`` with every event, in order, on the reader thread. It must
        not block; exceptions it raises are logged and do not stop the reader.
        Returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)
            lost = self._lost
        if lost is not None:
            callback(LinkDown(lost))

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _read_loop(self) -> None:
        # The inter-byte gap rule needs the time the *line* was silent, not the time
        # between two reads: a reader starved of CPU finds bytes that arrived long
        # ago and were never apart. So only time spent blocked on an empty port
        # counts: ``line_time`` advances while we wait, and stands still otherwise.
        line_time = 0.0
        read = self._chunk_reader()
        while not self._closing:
            try:
                before = self.clock.now()
                data, waited = read()
                if waited:
                    line_time += self.clock.now() - before
            except (serial.SerialException, OSError, TypeError, AttributeError) as err:
                if not self._closing:
                    self._fail(LinkLost(f"lost the port {self.name}: {err}"))
                return
            if data:
                now = self.clock.now()
                for message in self._decoder.feed(data, line_time):
                    self.last_rx = now
                    self._dispatch(message)
                self.stats.rejected_frames = self._decoder.rejected

    def _chunk_reader(self) -> Callable[[], tuple[bytes, bool]]:
        """A function returning (bytes, whether it had to wait for them).

        On a POSIX serial port or pty, one ``select`` and one ``os.read`` of whatever
        has arrived: a whole answer per wake-up (pyserial's ``read`` would take it in
        two, one byte and then the rest). Other ports go through pyserial."""
        port: Any = self.port
        fd = getattr(port, "fd", None)
        abort = getattr(port, "pipe_abort_read_r", None)
        if isinstance(fd, int) and isinstance(abort, int):

            def posix() -> tuple[bytes, bool]:
                waited = False
                ready, _, _ = select.select([fd, abort], [], [], 0)
                if not ready:
                    waited = True
                    ready, _, _ = select.select([fd, abort], [], [])
                if abort in ready:
                    os.read(abort, 1000)
                    return b"", waited
                data = os.read(fd, 4096)
                if not data:
                    raise serial.SerialException(
                        "device reports readiness to read but returned no data (device disconnected?)"
                    )
                return data, waited

            return posix

        def generic() -> tuple[bytes, bool]:
            waiting = int(getattr(port, "in_waiting", 0))
            return port.read(min(max(1, waiting), 4096)), not waiting

        return generic

    def _dispatch(self, message: Message) -> None:
        if message.KIND == Kind.RESPONSE:
            with self._lock:
                pending = self._pending.get(message.seq)
                if pending is None or pending.answer is not None:
                    self.stats.stale_answers += 1
                    return
                pending.answer = message
                if pending.on_answer is not None:
                    del self._pending[message.seq]
            if pending.on_answer is not None:
                try:
                    pending.on_answer(message)
                except Exception:
                    log.exception("an answer callback raised; the link goes on")
            else:
                self._signal(pending).set()
        elif isinstance(message, Event):
            self.stats.events += 1
            if self._next_event is not None and message.seq != self._next_event:
                self.stats.missed_events += (message.seq - self._next_event) & 0xFFFF
                self._notify(EventGap(self._next_event, message.seq))
            self._next_event = (message.seq + 1) & 0xFFFF
            self._notify(message)

    def _notify(self, notification: Notification) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(notification)
            except Exception:
                log.exception("an estim event subscriber raised; the link goes on")

    def _fail(self, error: LinkLost) -> None:
        with self._lock:
            if self._lost is not None:
                return
            self._lost = error
            waiters = list(self._pending.values())
            seq = self._seq
            self._seq = (self._seq + 1) & 0xFFFF
        log.warning("%s", error)
        # The unit may still hear us even if we no longer hear it: one last STOP,
        # unacknowledged, so that no output outlives our giving up on the link.
        try:
            with self._write_lock:
                self.port.write(encode(Stop(seq=seq, reason=StopReason.HOST_ERROR)))
        except Exception:  # the port itself may be what failed
            pass
        for pending in waiters:
            if pending.done is not None:
                pending.done.set()
        self._notify(LinkDown(error))

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the reader thread and close the port. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        cancel: Any = getattr(self.port, "cancel_read", None)
        if callable(cancel):
            with contextlib.suppress(serial.SerialException, OSError):
                cancel()
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5.0)
        with contextlib.suppress(serial.SerialException, OSError):
            self.port.close()
