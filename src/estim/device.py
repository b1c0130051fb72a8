"""The threaded runner: ``estim.connect(url) -> Device``.

Thin on purpose: every decision is in ``estim.core`` (and the session policy and
connection under it). This module owns the port, the clock and one I/O thread per
port, which reads whatever the unit sends, feeds it to the core with the time,
runs the core's timers (heartbeats come from here, the session loop) and does
what the core says: write bytes, wake callers, hand records to each session's
journal writer and callback thread (``estim.background``), so nothing slow ever
runs on it. A caller's request is written by the caller's own thread at once
(a STOP never waits behind anything), and its answer wakes it.

A signal handler or another thread that must not block posts to an inbox the
I/O thread empties on its next turn (``Session.request_stop``).

The core and the port writes share one lock, held only for pure code and for
writes (at most the port's write timeout, 1 s): the I/O thread never holds it
while it waits for the port or the clock, so a caller's STOP goes out at once
even while the loop waits.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import serial

import estim.shutdown as shutdown
from estim.bounds import checked, whole
from estim.clock import REAL_CLOCK, Clock, ManualClock
from estim.core import (
    GREETING,
    HELLO,
    STATUS_REQUESTS,
    HostCore,
    Output,
    Result,
    ask_hello_again,
    unit_from_hello,
)
from estim.errors import (
    EstimError,
    LinkError,
    LinkLost,
    LinkTimeout,
    RemoteProtocolError,
)
from estim.info import UnitInfo, UnitStatus
from estim.journal import Journal
from estim.limits import ClinicLimits, Limits
from estim.owner import Owner, hold, port_identity
from estim.plan import SessionPlan
from estim.policy import STATUS_EVERY_S, SessionPolicy
from estim.ports import (
    list_ports,
    open_port,
    port_clock,
    port_reader,
    port_writer,
    ports_hint,
    write_frames,
)
from estim.protocol import (
    OUTPUT_STATES,
    Ack,
    ClearFault,
    GetStatus,
    Message,
    Nack,
    State,
    Status,
    StopReason,
)
from estim.protocol.host import RESPONSE_TIMEOUT_S, RETRIES
from estim.record import SessionRecord
from estim.refusals import device_error
from estim.session import EventCallback, Session

log = logging.getLogger("estim.device")

__all__ = ["Device", "connect", "list_ports", "ports_hint", "run_session"]


class _Waiter:
    __slots__ = ("result", "signal")

    def __init__(self, clock: Clock) -> None:
        self.signal = clock.signal()
        self.result: Result = None


class Device:
    """A connected unit. Thread-safe: any thread may call any method."""

    def __init__(
        self,
        port: serial.SerialBase,
        clock: Clock,
        *,
        url: str,
        core: HostCore,
        clinic: ClinicLimits | None = None,
    ) -> None:
        self.port = port
        self.clock = clock
        self.url = url
        self.clinic = clinic
        #: the unit's identity and limits (from DEVICE_INFO, at connect)
        self.info: UnitInfo
        #: SAFETY.md ∩ this unit ∩ the clinic: asked for every plan and every live change
        self.limits: Limits
        #: the session id of an output found running at connect and stopped, if any
        self.stopped_orphan: int | None = None
        self._core = core
        self._lock = threading.RLock()  # the core, and carrying out what it says, in order
        self._inbox: deque[Callable[[float], None]] = deque()
        self._waiters: dict[object, _Waiter] = {}
        self._sessions: dict[SessionPolicy, Any] = {}
        self._io_deadline: float | None = None
        self._closing = False
        self._closed = False
        self._owner: Owner | None = None
        self._read = port_reader(port, clock)
        self._write = port_writer(port)
        #: set when the I/O thread has returned (waited for on the clock: a thread that
        #: waits on a manual clock needs its waiter to move time)
        self._io_done = clock.signal()
        self._thread = clock.start_thread(self._io_thread, name=f"estim-io {url}")
        shutdown.track_device(self)

    def __repr__(self) -> str:
        info = getattr(self, "info", None)
        who = f"{info.model} {info.serial_number}" if info else "unit"
        return f"<Device {who} on {self.url}>"

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def lost(self) -> LinkLost | None:
        """Why the link is gone for good (the port failed, or the unit cannot be
        reached any more), or None."""
        return self._core.lost

    @property
    def stats(self) -> Any:
        return self._core.conn.stats

    # -- operations ----------------------------------------------------------------------

    def status(self) -> UnitStatus:
        answer = self._request(GetStatus(), "status")
        if not isinstance(answer, Status):
            raise RemoteProtocolError(f"the unit answered GET_STATUS with {answer.TYPE.name}")
        return UnitStatus.from_message(answer)

    def clear_fault(self) -> State:
        answer = self._request(ClearFault(), "clear fault")
        assert isinstance(answer, Ack)
        return answer.state

    def stop(
        self, reason: StopReason | int = StopReason.OPERATOR, *, give_up_after: float = 0.5
    ) -> State:
        """Output off now, whatever else is in flight; resent until the unit
        acknowledges. Raises ``LinkLost`` if it stays silent for ``give_up_after``
        seconds (its watchdog has then turned output off) or the link is gone."""
        give_up_after = checked("give_up_after", give_up_after)
        result = self._call(
            lambda now, token: self._core.stop(reason, now, token, give_up_after=give_up_after)
        )
        if isinstance(result, EstimError):
            raise result
        assert isinstance(result, Ack | Nack)
        return result.state

    def start(
        self,
        plan: SessionPlan,
        *,
        journal: Any = None,
        on_event: Any = None,
        heartbeat: float | None = None,
        status_every: float = STATUS_EVERY_S,
    ) -> Session:
        """Run ``plan`` as a session; returns once START is accepted. See ``estim.session``."""
        return Session.begin(
            self,
            plan,
            journal=journal,
            on_event=on_event,
            heartbeat=heartbeat,
            status_every=status_every,
        )

    def _request(self, message: Message, what: str) -> Message:
        result = self._call(lambda now, token: self._core.request(message, now, token))
        if isinstance(result, EstimError):
            raise result
        assert result is not None
        if isinstance(result, Nack):
            raise device_error(result, what)
        return result

    # -- the runner ---------------------------------------------------------------------------

    def _call(self, act: Callable[[float, object], None], timeout: float | None = None) -> Result:
        """Ask the core (``act(now, token)``), carry out what it says from this thread,
        and wait for ``token`` to be resolved. Raises TimeoutError after ``timeout``.

        The I/O thread is not woken for the request: its answer wakes it anyway. If a
        deadline comes first that the I/O thread is not waiting for (this request's
        resend, usually), this thread runs the core's timers itself."""
        waiter = _Waiter(self.clock)
        with self._lock:
            self._waiters[waiter] = waiter
            act(self.clock.now(), waiter)
            self._carry_out(self._core.take())
        give_up = None if timeout is None else self.clock.now() + timeout
        ticked = False
        try:
            while True:
                wake_at = self._unwatched_deadline(give_up)
                left = None if wake_at is None else max(0.0, wake_at - self.clock.now())
                if waiter.signal.wait(left):
                    return waiter.result
                now = self.clock.now()
                if give_up is not None and now >= give_up:
                    with self._lock:
                        self._waiters.pop(waiter, None)
                    raise TimeoutError(
                        f"no result from the unit on {self.url} within {timeout:g} s"
                    )
                with self._lock:
                    ticked = True
                    self._core.tick(now)
                    self._carry_out(self._core.take())
        finally:
            if ticked:
                with self._lock:
                    self._wake_if_sooner()

    def _unwatched_deadline(self, give_up: float | None) -> float | None:
        """The sooner of ``give_up`` and a core deadline the I/O thread would miss."""
        with self._lock:
            due = self._core.next_deadline()
            watched = self._io_deadline
        if due is not None and watched is not None and due >= watched:
            due = None
        return min((t for t in (due, give_up) if t is not None), default=None)

    def _do(self, act: Callable[[float], None]) -> None:
        """Ask the core something that needs no answer, from this thread."""
        with self._lock:
            act(self.clock.now())
            self._carry_out(self._core.take())
            self._wake_if_sooner()

    def _post(self, act: Callable[[float], None], *, urgent: bool = True) -> None:
        """From a thread that must not block (a signal handler, a background job):
        the I/O thread does it on its next turn."""
        self._inbox.append(act)
        if urgent:
            self._wake()

    def _io_thread(self) -> None:
        try:
            self._run()
        finally:
            self._io_done.set()

    def _join_io_thread(self) -> None:
        if self._thread is not threading.current_thread():
            self._io_done.wait(5.0)
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        line_time = 0.0  # advances only while the reader waited on a silent line
        while True:
            with self._lock:
                if self._closing:
                    return
                deadline = self._core.next_deadline()
                self._io_deadline = deadline
            timeout = None if deadline is None else max(0.0, deadline - self.clock.now())
            try:
                data, waited = self._read(None if self._inbox else timeout)
            except (serial.SerialException, OSError, TypeError, AttributeError) as err:
                if not self._closing:
                    self._port_failed(err)
                return
            line_time += waited
            with self._lock:
                now = self.clock.now()
                while self._inbox:
                    self._inbox.popleft()(now)
                if data:
                    self._core.receive(data, now, line_time=line_time)
                if not data or (deadline is not None and now >= deadline):
                    # (bytes before the deadline, an ACK usually: no timer is due; one
                    # that has become due is seen by the next turn, with timeout 0)
                    self._core.tick(now)
                self._carry_out(self._core.take())

    def _carry_out(self, out: Output) -> None:
        """Do what the core said, in its order (lock held)."""
        failed = write_frames(self._write, out.writes, self.url)
        records = out.records()
        for token, result in out.resolved:
            waiter = self._waiters.pop(token, None)
            if waiter is not None:
                waiter.result = result
                waiter.signal.set()
        for policy, record, state in records:
            session = self._sessions.get(policy)
            if session is not None:
                session._recorded(record, state)
        for policy in out.ended:
            session = self._sessions.pop(policy, None)
            if session is not None:
                session._ended()
        if failed is not None:
            self._port_failed(failed)

    def _port_failed(self, err: BaseException) -> None:
        with self._lock:
            self._core.port_failed(LinkLost(f"lost the port {self.url}: {err}"), self.clock.now())
            out = self._core.take()
            out.writes.clear()  # the port is what failed
            self._carry_out(out)

    def _wake_if_sooner(self) -> None:
        deadline = self._core.next_deadline()
        if deadline is not None and (self._io_deadline is None or deadline < self._io_deadline):
            self._wake()

    def _wake(self) -> None:
        cancel = getattr(self.port, "cancel_read", None)
        if callable(cancel):
            try:
                cancel()
            except (serial.SerialException, OSError):
                pass

    # -- connecting and closing -----------------------------------------------------------------

    def _hello(self) -> None:
        with self._lock:
            self._write(GREETING)
        asked = 1
        answer = self._call(lambda now, token: self._core.request(HELLO, now, token))
        while ask_hello_again(answer, self.stats, asked):
            asked += 1
            answer = self._call(lambda now, token: self._core.request(HELLO, now, token))
        self.info = unit_from_hello(self.url, answer, self.stats)
        self.limits = Limits(self.info, self.clinic)

    def _stop_orphaned_output(self) -> None:
        """A unit found delivering output has lost its host: whoever could open the
        port now is not running that session. A reconnect means output zero (SAFETY.md 4)."""
        for asked in range(1, STATUS_REQUESTS + 1):
            try:
                status = self.status()
                break
            except LinkTimeout:
                if asked == STATUS_REQUESTS:
                    raise
        if status.state in OUTPUT_STATES:
            log.warning(
                "the unit on %s was delivering output for session %08x with no host; stopping it",
                self.url,
                status.session_id,
            )
            self.stop(StopReason.HOST_SHUTDOWN)
            self.stopped_orphan = status.session_id

    def _stop_for_estim_stop(self) -> str:
        """``estim stop`` from another process found this device: stop its output."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.stop(StopReason.OPERATOR, "stopped with estim stop")
        where = f"{self.url}, held by process {os.getpid()}"
        if sessions:
            return f"session {', '.join(s.id for s in sessions)} on {where}"
        state = self.stop(StopReason.OPERATOR)
        return f"no session was running on {where}; the unit was told to stop and is {state.name}"

    def _close_at_exit(self, detail: str, limit: float) -> None:
        """The program is ending with this device open (``estim.shutdown``): stop
        its sessions with ``detail`` as the reason, then close."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.stop(StopReason.HOST_SHUTDOWN, detail)
        self.close()

    def close(self) -> None:
        """Stop any live session and any output (best effort), then close the port.
        Idempotent."""
        shutdown.forget_device(self)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sessions = list(self._sessions.values())
        if self._owner is not None:
            self._owner.close()
        for session in sessions:
            session.stop(StopReason.HOST_SHUTDOWN, "the device was closed")
            try:
                session.wait(timeout=5.0)
            except TimeoutError:
                log.warning("session %s did not end within 5 s of closing the device", session.id)
        try:
            if self.lost is None:
                self.stop(StopReason.HOST_SHUTDOWN)
        except LinkError:
            pass  # the unit's watchdog is the backstop
        finally:
            with self._lock:
                self._closing = True
            self._wake()
            self._join_io_thread()
            with self._lock:  # no write is under way, and none follows
                try:
                    self.port.close()
                except (serial.SerialException, OSError):
                    pass


def connect(
    url: str,
    *,
    clock: Clock | None = None,
    clinic: ClinicLimits | None = None,
    baudrate: int = 115200,
    response_timeout: float = RESPONSE_TIMEOUT_S,
    retries: int = RETRIES,
) -> Device:
    """Open ``url``, identify the unit, stop any output it was left delivering, and
    return a ``Device``.

    ``clinic`` narrows the limits for every plan and live change on this device.
    A port that runs on virtual time (``sim://`` on a ``ManualClock``) brings its
    clock; a ``ManualClock`` given for any other port is refused. Each request waits
    ``response_timeout`` seconds for its answer and is resent ``retries`` times.
    Raises ``PortNotFound``, ``PortBusy``, ``NoAnswer``, ``VersionMismatch`` or ``LinkError``.
    """
    response_timeout = checked("response_timeout", response_timeout)
    retries = whole("retries", retries)
    baudrate = whole("baudrate", baudrate)
    port = open_port(url, baudrate=baudrate)
    own = port_clock(port)
    if isinstance(clock, ManualClock) and own is not clock:
        port.close()
        raise LinkError(
            f"a manual clock can only drive a simulated unit that shares it (not {url})"
        )
    core = HostCore(
        name=url.strip(),
        first_seq=random.randrange(0x10000),  # PROTOCOL.md 10: a new host starts at random
        response_timeout=response_timeout,
        retries=retries,
    )
    device = Device(port, clock or own or REAL_CLOCK, url=url.strip(), core=core, clinic=clinic)
    try:
        # claimed before a byte is sent: a unit another estim holds is not touched
        device._owner = hold(port_identity(url), device._stop_for_estim_stop)
        device._hello()
        device._stop_orphaned_output()
    except BaseException:
        if device._owner is not None:
            device._owner.close()
        device._closed = True  # nothing to stop: close the port only
        with device._lock:
            device._closing = True
        device._wake()
        device._join_io_thread()
        port.close()
        raise
    return device


def run_session(
    url: str,
    plan: SessionPlan,
    *,
    on_event: EventCallback | None = None,
    journal: Journal | None = None,
    handle_signals: bool = True,
    **connect_options: Any,
) -> SessionRecord:
    """Connect, run ``plan`` to its end, and return the record: the blocking API
    for scripts. Ctrl-C, SIGTERM and SIGHUP stop output and end the session
    (when called from the main thread)."""
    from estim.signals import stop_on_signals

    with connect(url, **connect_options) as device:
        session: Session = device.start(plan, on_event=on_event, journal=journal)
        with stop_on_signals(session, enabled=handle_signals):
            return session.wait()
