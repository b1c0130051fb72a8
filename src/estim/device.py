"""The threaded runner: ``estim.connect(url) -> Device``.

Only how this runner waits, wakes and reads the clock; every decision is in
``estim.core`` (and the session policy and connection under it), and every
operation is written once, as steps, in ``estim.steps`` and ``estim.runner``. This
module owns one I/O thread per port, which reads whatever the unit sends, feeds it
to the core with the time, runs the core's timers (heartbeats come from here, the
session loop) and does what the core says (``RunnerBase._dispatch``): write bytes,
wake callers, hand records to each session's journal writer and callback thread
(``estim.background``), so nothing slow ever runs on it. A caller's request is
written by the caller's own thread at once (a STOP never waits behind anything),
and its answer wakes it.

A signal handler or another thread that must not block posts to an inbox the I/O
thread empties on its next turn (``Session.request_stop``).

The core and the port writes share one lock, held only for pure code and for
writes (at most the port's write timeout, 1 s): the I/O thread never holds it
while it waits for the port or the clock, so a caller's STOP goes out at once
even while the loop waits.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import serial

import estim.runner as runner
import estim.shutdown as shutdown
import estim.steps as steps
from estim.bounds import checked
from estim.clock import REAL_CLOCK, Clock, ManualClock
from estim.core import HostCore, Result
from estim.errors import LinkError
from estim.info import UnitStatus
from estim.journal import Journal
from estim.limits import ClinicLimits
from estim.owner import hold, port_identity
from estim.plan import SessionPlan
from estim.policy import STATUS_EVERY_S
from estim.ports import list_ports, ports_hint
from estim.protocol import Message, State, StopReason
from estim.protocol.host import RESPONSE_TIMEOUT_S, RETRIES
from estim.record import SessionRecord
from estim.runner import RunnerBase
from estim.session import EventCallback, Session
from estim.steps import Ask, Block, Settle, Steps, Touch

log = logging.getLogger("estim.device")

__all__ = ["Device", "connect", "list_ports", "ports_hint", "run_session"]

T = TypeVar("T")


class _Waiter:
    __slots__ = ("result", "signal")

    def __init__(self, clock: Clock) -> None:
        self.signal = clock.signal()
        self.result: Result = None


class Device(RunnerBase):
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
        super().__init__(port, clock, url=url, core=core, clinic=clinic)
        self._lock = threading.RLock()  # the core, and carrying out what it says, in order
        self._inbox: deque[Callable[[HostCore, float], None]] = deque()
        self._waiters: dict[object, _Waiter] = {}
        self._io_deadline: float | None = None
        self._closing = False
        #: set when the I/O thread has returned (waited for on the clock: a thread that
        #: waits on a manual clock needs its waiter to move time)
        self._io_done = clock.signal()
        self._thread = clock.start_thread(self._io_thread, name=f"estim-io {url}")
        shutdown.track_device(self)

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations ----------------------------------------------------------------------

    def status(self) -> UnitStatus:
        return self._drive(steps.status())

    def clear_fault(self) -> State:
        return self._drive(steps.clear_fault())

    def stop(
        self, reason: StopReason | int = StopReason.OPERATOR, *, give_up_after: float = 0.5
    ) -> State:
        """Output off now, whatever else is in flight; resent until the unit
        acknowledges. Raises ``LinkLost`` if it stays silent for ``give_up_after``
        seconds (its watchdog has then turned output off) or the link is gone."""
        return self._drive(steps.stop(reason, checked("give_up_after", give_up_after)))

    def start(
        self,
        plan: SessionPlan,
        *,
        journal: Journal | None = None,
        on_event: EventCallback | None = None,
        heartbeat: float | None = None,
        status_every: float = STATUS_EVERY_S,
    ) -> Session:
        """Run ``plan`` as a session; returns once START is accepted (see README).
        Without ``journal``, the default journal is opened for the session."""
        session = self._drive(
            runner.start(
                self,
                plan,
                journal,
                heartbeat=heartbeat,
                status_every=status_every,
                make_session=lambda policy, opened, owns: Session(
                    self, policy, opened, owns_journal=owns, on_event=on_event
                ),
            )
        )
        assert isinstance(session, Session)
        return session

    def _request(self, message: Message, what: str) -> Message:
        return self._drive(steps.request(message, what))

    def _hello(self) -> None:
        self._drive(runner.hello(self))

    # -- how this runner carries out steps ----------------------------------------------

    def _drive(self, todo: Steps[T]) -> T:
        """Carry out ``todo``'s steps from the calling thread: a ``Touch`` under the
        lock, an ``Ask`` waiting for its answer, a ``Block`` right here (this thread
        is a caller's, never the I/O thread), a ``Settle`` waiting for the session.
        An exception (Ctrl-C while waiting) is thrown into the steps, so their
        clean-up runs before it goes on."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = todo.throw(error) if error is not None else todo.send(value)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            value, error = None, None
            try:
                if isinstance(step, Touch):
                    with self._lock:
                        value = step.act(self._core, self.clock.now())
                        self._carry_out()
                        self._wake_if_sooner()
                elif isinstance(step, Ask):
                    value = self._call(step.act, step.timeout)
                elif isinstance(step, Block):
                    value = step.work()
                elif isinstance(step, Settle):
                    step.session.wait(step.timeout)
            except BaseException as err:  # into the steps: their clean-up runs
                error = err

    def _call(
        self, act: Callable[[HostCore, float, object], None], timeout: float | None
    ) -> Result:
        """Ask the core (``act(core, now, token)``), carry out what it says from this
        thread, and wait for ``token`` to be resolved. Raises TimeoutError after
        ``timeout``.

        The I/O thread is not woken for the request: its answer wakes it anyway. If a
        deadline comes first that the I/O thread is not waiting for (this request's
        resend, usually), this thread runs the core's timers itself."""
        waiter = _Waiter(self.clock)
        with self._lock:
            self._waiters[waiter] = waiter
            act(self._core, self.clock.now(), waiter)
            self._carry_out()
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
                    self._carry_out()
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

    def _resolve(self, token: object, result: Result) -> None:
        waiter = self._waiters.pop(token, None)
        if waiter is not None:
            waiter.result = result
            waiter.signal.set()

    def _post(self, act: Callable[[HostCore, float], None], *, urgent: bool = True) -> None:
        """From a thread that must not block (a signal handler, a background job):
        the I/O thread does it on its next turn."""
        self._inbox.append(act)
        if urgent:
            self._wake()

    def _carry_out(self) -> None:
        """What the core now says, carried out (lock held)."""
        failed = self._dispatch(self._core.take())
        if failed is not None:
            self._lose_port(failed, self.clock.now())

    # -- the I/O thread -----------------------------------------------------------------

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
                    with self._lock:
                        self._lose_port(err, self.clock.now())
                return
            line_time += waited
            with self._lock:
                now = self.clock.now()
                while self._inbox:
                    self._inbox.popleft()(self._core, now)
                if data:
                    self._core.receive(data, now, line_time=line_time)
                if not data or (deadline is not None and now >= deadline):
                    # (bytes before the deadline, an ACK usually: no timer is due; one
                    # that has become due is seen by the next turn, with timeout 0)
                    self._core.tick(now)
                self._carry_out()

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

    # -- closing ------------------------------------------------------------------------------

    def _stop_for_estim_stop(self) -> str:
        """``estim stop`` from another process found this device (on the owner's thread)."""
        return self._drive(runner.stop_everything(self))

    def _close_at_exit(self, detail: str, limit: float) -> None:
        """The program is ending with this device open (``estim.shutdown``): stop
        its sessions with ``detail`` as the reason, then close."""
        self._close(detail)

    def close(self) -> None:
        """Stop any live session and any output (best effort), then close the port.
        Idempotent."""
        self._close("the device was closed")

    def _close(self, detail: str) -> None:
        shutdown.forget_device(self)
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._owner is not None:
            self._owner.close()
        try:
            self._drive(runner.close(self, detail))
        finally:
            self._shut()

    def _shut(self) -> None:
        """The I/O thread ended and the port closed: nothing is sent any more."""
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
    Raises ``PortNotFound``, ``PortBusy``, ``NoAnswer``, ``VersionMismatch``,
    ``OptionError`` or ``LinkError``.
    """
    port, own, core = runner.open_unit(
        url, baudrate=baudrate, response_timeout=response_timeout, retries=retries
    )
    if isinstance(clock, ManualClock) and own is not clock:
        port.close()
        raise LinkError(
            f"a manual clock can only drive a simulated unit that shares it (not {url})"
        )
    device = Device(port, clock or own or REAL_CLOCK, url=url.strip(), core=core, clinic=clinic)
    try:
        # claimed before a byte is sent: a unit another estim holds is not touched
        device._owner = hold(port_identity(url), device._stop_for_estim_stop)
        device._drive(runner.hello(device))
        device._drive(runner.check_orphan(device))
    except BaseException:
        if device._owner is not None:
            device._owner.close()
        device._closed = True  # nothing to stop: close the port only
        shutdown.forget_device(device)
        device._shut()
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
