"""The asyncio runner: the same core as the threaded one, driven by an event loop.

    async with estim.aio.connect("sim://") as unit:
        session = await unit.start(plan, journal=journal)
        async for event in session.events():
            ...
        record = await session.wait()

Everything is decided by ``estim.core`` (and the session policy under it): this
module only feeds it bytes (from one reader thread per port, handed to the loop)
and the loop's time, sets timers at the deadlines it asks for, writes what it
says, and resolves futures. Journal writes and ``on_event`` callbacks run on
threads of their own, as in the threaded runner; ``session.events()`` yields the
same records on the loop.

Cancelling a task that awaits ``session.wait()``, leaving ``async with``, or
closing the device stops output.

Virtual time: ``estim.aio.run(main(), clock=estim_clock)`` runs a coroutine on an
event loop whose time is a ``ManualClock`` (as ``trio.testing.MockClock``
does), so a 10-minute session on a simulated unit runs in seconds and every
heartbeat happens at its exact instant.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import selectors
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import serial

import estim.runner as runner
import estim.shutdown as shutdown
import estim.steps as steps
from estim.aio_session import AsyncSession
from estim.bounds import checked
from estim.clock import REAL_CLOCK, Clock, ManualClock
from estim.core import HostCore, Result
from estim.errors import LinkError
from estim.info import UnitStatus
from estim.journal import Journal
from estim.limits import ClinicLimits
from estim.owner import ANSWER_S, hold, port_identity
from estim.plan import SessionPlan
from estim.policy import STATUS_EVERY_S
from estim.protocol import Message, State, StopReason
from estim.protocol.host import RESPONSE_TIMEOUT_S, RETRIES
from estim.runner import RunnerBase
from estim.session import EventCallback
from estim.steps import Ask, Block, Steps, Touch

log = logging.getLogger("estim.aio")

__all__ = ["AsyncDevice", "AsyncSession", "ManualClockLoop", "connect", "run"]

T = TypeVar("T")


class AsyncDevice(RunnerBase):
    """A connected unit, on the running event loop. Create with ``await connect(url)``."""

    def __init__(
        self,
        port: serial.SerialBase,
        clock: Clock,
        *,
        url: str,
        core: HostCore,
        clinic: ClinicLimits | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(port, clock, url=url, core=core, clinic=clinic)
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        #: bytes read, with their line time, not yet fed to the core: the reader thread
        #: appends, the loop takes; what a closed loop never took is still here
        self._inbox: deque[tuple[bytes, float]] = deque()
        self._reader = clock.start_thread(self._read_loop, name=f"estim-aio-reader {url}")
        shutdown.track_device(self)

    async def __aenter__(self) -> AsyncDevice:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- operations ----------------------------------------------------------------------

    async def status(self) -> UnitStatus:
        return await self._drive(steps.status())

    async def clear_fault(self) -> State:
        return await self._drive(steps.clear_fault())

    async def stop(
        self, reason: StopReason | int = StopReason.OPERATOR, *, give_up_after: float = 0.5
    ) -> State:
        """Output off now, whatever else is in flight (see ``Device.stop``)."""
        return await self._drive(steps.stop(reason, checked("give_up_after", give_up_after)))

    async def start(
        self,
        plan: SessionPlan,
        *,
        journal: Journal | None = None,
        on_event: EventCallback | None = None,
        heartbeat: float | None = None,
        status_every: float = STATUS_EVERY_S,
    ) -> AsyncSession:
        """Run ``plan``; returns once START is accepted. Checked by the device's limits
        before anything is sent; "start requested" is committed to the journal first,
        off the loop (without ``journal``, the default journal is opened there too)."""
        session = await self._drive(
            runner.start(
                self,
                plan,
                journal,
                heartbeat=heartbeat,
                status_every=status_every,
                make_session=lambda policy, opened, owns: AsyncSession(
                    self, policy, opened, owns_journal=owns, on_event=on_event
                ),
            )
        )
        assert isinstance(session, AsyncSession)
        return session

    async def _request(self, message: Message, what: str) -> Message:
        return await self._drive(steps.request(message, what))

    # -- how this runner carries out steps ----------------------------------------------

    async def _drive(self, todo: Steps[T]) -> T:
        """Carry out ``todo``'s steps on the loop: a ``Touch`` at once, an ``Ask`` by
        awaiting its answer, a ``Block`` on a thread of its own, a ``Settle`` by
        awaiting the session. An exception is thrown into the steps. A cancellation
        while waiting goes in too, and the clean-up is then carried out at once
        (``_drive_cancelled``): the loop may not run another turn. Cancelled during
        a ``Block``, the steps go on (cancelled) once its work is done."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = todo.throw(error) if error is not None else todo.send(value)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            value, error = None, None
            if isinstance(step, Touch):
                try:
                    value = step.act(self._core, self._loop.time())
                except BaseException as err:
                    error = err
                self._carry_out()
                continue
            if isinstance(step, Block):
                work = self._off_loop(step.work)
                try:
                    value = await asyncio.shield(work)
                except asyncio.CancelledError:
                    work.add_done_callback(lambda done: self._after_block(todo, done))
                    raise
                except BaseException as err:
                    error = err
                continue
            try:
                if isinstance(step, Ask):
                    value = await self._call(step.act)
                elif step.timeout is None:
                    await step.session.wait()
                else:
                    await asyncio.wait_for(step.session.wait(), step.timeout)
            except asyncio.CancelledError as cancelled:
                self._drive_cancelled(todo, error=cancelled)
                raise
            except BaseException as err:
                error = err

    def _after_block(self, todo: Steps[Any], done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            self._drive_cancelled(todo, error=asyncio.CancelledError())
        elif done.exception() is not None:
            self._drive_cancelled(todo, error=done.exception())
        else:
            self._drive_cancelled(todo, value=done.result())

    def _drive_cancelled(
        self, todo: Steps[Any], *, value: Any = None, error: BaseException | None = None
    ) -> None:
        """The rest of ``todo`` now, on the loop, without waiting: ``Touch`` steps are
        carried out; at every step that would wait, a cancellation is thrown in."""
        while True:
            try:
                step = todo.throw(error) if error is not None else todo.send(value)
            except BaseException:  # done, or the steps' own re-raise of the cancellation
                return
            value, error = None, None
            if isinstance(step, Touch):
                try:
                    value = step.act(self._core, self._loop.time())
                except BaseException as err:
                    error = err
                self._carry_out()
            else:
                error = asyncio.CancelledError()

    def _call(self, act: Callable[[HostCore, float, object], None]) -> asyncio.Future[Result]:
        future: asyncio.Future[Result] = self._loop.create_future()
        act(self._core, self._loop.time(), future)
        self._carry_out()
        return future

    def _off_loop(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """``work()`` on a thread of its own, its result on the loop. Not
        ``run_in_executor``: the thread must come from the device's clock, or a
        ``ManualClock`` would not know it is running and could stall virtual time."""
        future: asyncio.Future[T] = self._loop.create_future()

        def settle(outcome: Callable[[], None]) -> None:
            if not future.cancelled():
                outcome()

        def body() -> None:
            try:
                result = work()
            except BaseException as err:
                failure = err
                self._loop.call_soon_threadsafe(settle, lambda: future.set_exception(failure))
            else:
                self._loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

        self.clock.start_thread(body, name=f"estim-aio-journal {self.url}")
        return future

    def _resolve(self, token: object, result: Result) -> None:
        if isinstance(token, asyncio.Future) and not token.done() and not self._loop.is_closed():
            token.set_result(result)

    def _post(self, act: Callable[[HostCore, float], None], *, urgent: bool = True) -> None:
        """From any thread: do ``act(core, now)`` on the loop (nothing once the loop is
        closed: then nothing can be sent, and the unit's watchdog ends any output)."""
        try:
            self._loop.call_soon_threadsafe(self._run_posted, act)
        except RuntimeError:
            log.warning("%s: the event loop is closed; a request to the unit was dropped", self.url)

    def _run_posted(self, act: Callable[[HostCore, float], None]) -> None:
        act(self._core, self._loop.time())
        self._carry_out()

    # -- bytes in, timers, what the core says ---------------------------------------------

    def _read_loop(self) -> None:
        """The reader thread: blocking reads, handed to the loop with the line time
        (which advances only while the line was silent, for the gap rule)."""
        line_time = 0.0
        while not self._closing:
            try:
                data, waited = self._read(None)
            except (serial.SerialException, OSError, TypeError, AttributeError) as err:
                if not self._closing:
                    with contextlib.suppress(RuntimeError):  # the loop may be closed
                        self._loop.call_soon_threadsafe(self._port_failed, err)
                return
            line_time += waited
            if data:
                self._inbox.append((data, line_time))
                try:
                    self._loop.call_soon_threadsafe(self._received)
                except RuntimeError:
                    return  # the loop is closed: what was read waits in the inbox

    def _received(self) -> None:
        if not self._inbox:
            return
        now = self._loop.time()
        while self._inbox:
            data, line_time = self._inbox.popleft()
            self._core.receive(data, now, line_time=line_time)
        self._carry_out()  # (a timer that has become due fires from the re-armed timer)

    def _tick(self) -> None:
        self._timer = None
        self._core.tick(self._loop.time())
        self._carry_out()

    def _port_failed(self, err: BaseException) -> None:
        self._lose_port(err, self._loop.time())
        self._schedule()

    def _carry_out(self) -> None:
        failed = self._dispatch(self._core.take())
        if failed is not None:
            self._port_failed(failed)
            return
        self._schedule()

    def _schedule(self) -> None:
        if self._loop.is_closed():
            return
        deadline = self._core.next_deadline()
        if self._timer is not None:
            if deadline is not None and self._timer.when() == deadline:
                return
            self._timer.cancel()
            self._timer = None
        # until the port closes, not from close(): its last STOP needs its resends
        if deadline is not None and not self._closing:
            self._timer = self._loop.call_at(deadline, self._tick)

    # -- estim stop, closing ------------------------------------------------------------------

    def _stop_for_estim_stop(self) -> str:
        """``estim stop`` from another process found this device (on the owner's thread)."""
        future = asyncio.run_coroutine_threadsafe(
            self._drive(runner.stop_everything(self)), self._loop
        )
        return future.result(timeout=ANSWER_S)

    def _close_at_exit(self, detail: str, limit: float) -> None:
        """The program is ending with this device open (``estim.shutdown``): stop its
        sessions with ``detail`` as the reason and close, on its loop if that still
        runs somewhere, else (the usual case: ``asyncio.run`` has returned) without it."""
        loop = self._loop
        if loop.is_closed():
            self._finish_without_loop(detail, limit)
        elif loop.is_running():  # on another thread
            done = asyncio.run_coroutine_threadsafe(self._close(detail), loop)
            with contextlib.suppress(TimeoutError, concurrent.futures.TimeoutError):
                done.result(timeout=limit)
        else:
            loop.run_until_complete(asyncio.wait_for(self._close(detail), limit))

    def _finish_without_loop(self, detail: str, limit: float) -> None:
        """Drive the core from this thread, the loop being gone: the reader thread
        is stopped first, what it read and the loop never took is fed in, every
        session is stopped, and the exchange goes on until each has ended (the unit
        answered, or its silence was given up) or ``limit`` seconds have passed.
        Records go to each session's journal writer, which outlives the loop."""
        self._closing = True
        if self._owner is not None:
            self._owner.close()
        cancel = getattr(self.port, "cancel_read", None)
        if callable(cancel):
            with contextlib.suppress(serial.SerialException, OSError):
                cancel()
        self._reader.join(timeout=1.0)
        clock = self.clock
        end = clock.now() + limit
        line_time = self._inbox[-1][1] if self._inbox else 0.0
        while self._inbox:
            data, line_time = self._inbox.popleft()
            self._core.receive(data, clock.now(), line_time=line_time)
        for policy in list(self._sessions):
            self._core.stop_session(policy, StopReason.HOST_SHUTDOWN, detail, clock.now(), None)
        while True:
            failed = self._dispatch(self._core.take())
            if failed is not None:
                self._lose_port(failed, clock.now())
            now = clock.now()
            if not self._sessions or now >= end or self._core.lost is not None:
                break
            due = self._core.next_deadline()
            wait = end - now if due is None else min(end, due) - now
            try:
                data, waited = self._read(max(0.0, wait))
            except (serial.SerialException, OSError) as err:
                self._lose_port(err, clock.now())
                continue
            line_time += waited
            if data:
                self._core.receive(data, clock.now(), line_time=line_time)
            self._core.tick(clock.now())
        self._closed = True
        shutdown.forget_device(self)
        with contextlib.suppress(serial.SerialException, OSError):
            self.port.close()

    async def close(self) -> None:
        """Stop any live session and any output (best effort), then close the port."""
        await self._close("the device was closed")

    async def _close(self, detail: str) -> None:
        shutdown.forget_device(self)
        if self._closed:
            return
        self._closed = True
        if self._owner is not None:
            self._owner.close()
        try:
            await self._drive(runner.close(self, detail))
        finally:
            self._shut()

    def _shut(self) -> None:
        shutdown.forget_device(self)
        self._closed = True
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        cancel = getattr(self.port, "cancel_read", None)
        if callable(cancel):
            with contextlib.suppress(serial.SerialException, OSError):
                cancel()
        self._reader.join(timeout=5.0)
        with contextlib.suppress(serial.SerialException, OSError):
            self.port.close()


class _Connecting:
    """``connect(...)`` is awaitable and an async context manager."""

    def __init__(self, coro: Coroutine[Any, Any, AsyncDevice]) -> None:
        self._coro = coro
        self._device: AsyncDevice | None = None

    def __await__(self) -> Any:
        return self._coro.__await__()

    async def __aenter__(self) -> AsyncDevice:
        self._device = await self._coro
        return self._device

    async def __aexit__(self, *exc: object) -> None:
        if self._device is not None:
            await self._device.close()


def connect(
    url: str,
    *,
    clinic: ClinicLimits | None = None,
    baudrate: int = 115200,
    response_timeout: float = RESPONSE_TIMEOUT_S,
    retries: int = RETRIES,
) -> _Connecting:
    """``await connect(url)`` or ``async with connect(url) as unit``: open the port,
    identify the unit, stop any output it was left delivering (see ``estim.connect``).
    A simulated unit on a ``ManualClock`` needs a loop on that clock (``estim.aio.run``)."""
    return _Connecting(
        _connect(
            url,
            clinic=clinic,
            baudrate=baudrate,
            response_timeout=response_timeout,
            retries=retries,
        )
    )


async def _connect(
    url: str, *, clinic: ClinicLimits | None, baudrate: int, response_timeout: float, retries: int
) -> AsyncDevice:
    loop = asyncio.get_running_loop()
    port, own, core = runner.open_unit(
        url, baudrate=baudrate, response_timeout=response_timeout, retries=retries
    )
    loop_clock = getattr(loop, "clock", None)
    if isinstance(own, ManualClock) and own is not loop_clock:
        port.close()
        raise LinkError(
            f"{url} runs on a manual clock: run the program with estim.aio.run(main(), clock=...) "
            "on that clock"
        )
    device = AsyncDevice(
        port, own or REAL_CLOCK, url=url.strip(), core=core, clinic=clinic, loop=loop
    )
    try:
        # claimed before a byte is sent: a unit another estim holds is not touched
        device._owner = hold(port_identity(url), device._stop_for_estim_stop)
        await device._drive(runner.hello(device))
        await device._drive(runner.check_orphan(device))
    except BaseException:
        if device._owner is not None:
            device._owner.close()
        device._shut()
        raise
    return device


# --- virtual time for asyncio ------------------------------------------------------------------


class _ClockSelector(selectors.DefaultSelector):
    """Waits on a ``ManualClock`` instead of the real one: an idle loop lets virtual
    time move to its next timer, and bytes handed over from another thread
    (``call_soon_threadsafe``) wake it."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self.wake = clock.signal()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.wake.clear()
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        self.wake.wait(timeout)
        return super().select(0)


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose time is a ``ManualClock``; run it on a thread started
    with ``clock.start_thread`` (``estim.aio.run`` does)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self._clock_selector = _ClockSelector(clock)
        super().__init__(self._clock_selector)

    def time(self) -> float:
        return self.clock.now()

    def _write_to_self(self) -> None:
        super()._write_to_self()  # type: ignore[misc]
        self._clock_selector.wake.set()


def run(main: Awaitable[T], *, clock: Clock | None = None) -> T:
    """``asyncio.run(main)``, or, with a ``ManualClock``, run it on a loop on that
    clock: the calling thread waits on the clock, so virtual time moves whenever
    every participant is idle."""
    if not isinstance(clock, ManualClock):
        return asyncio.run(_as_coroutine(main))
    done = clock.signal()
    outcome: dict[str, Any] = {}

    def body() -> None:
        loop = ManualClockLoop(clock)
        try:
            outcome["result"] = loop.run_until_complete(_as_coroutine(main))
        except BaseException as err:
            outcome["error"] = err
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            done.set()

    thread = clock.start_thread(body, name="estim-aio-loop")
    done.wait()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]  # type: ignore[no-any-return]


async def _as_coroutine(main: Awaitable[T]) -> T:
    return await main
