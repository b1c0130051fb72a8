"""A running session on the asyncio runner: ``await unit.start(plan) -> AsyncSession``.

The same handle as the threaded ``Session`` (``estim.session.SessionHandle``), with
coroutines: each asks the device through the steps of ``estim.steps``. Records come
as they happen from ``events()``; cancelling the task that awaits ``wait()`` stops
output at once, on the loop (it may not run another turn).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import estim.steps as steps
from estim.core import HostCore
from estim.journal import Journal
from estim.policy import SessionPolicy
from estim.protocol import StopReason
from estim.record import EventRecord, SessionRecord
from estim.session import Runner, SessionHandle
from estim.steps import Steps

T = TypeVar("T")


class AsyncRunner(Runner, Protocol):
    """What the asyncio session needs of ``estim.aio.AsyncDevice`` (without importing it)."""

    _loop: asyncio.AbstractEventLoop

    async def _drive(self, steps: Steps[T]) -> T: ...

    def _run_posted(self, act: Callable[[HostCore, float], None]) -> None: ...


class AsyncSession(SessionHandle):
    """A running session on an ``AsyncDevice``. Create with ``await unit.start(plan)``."""

    def __init__(
        self, device: AsyncRunner, policy: SessionPolicy, journal: Journal, **kw: Any
    ) -> None:
        loop = device._loop
        self._pending_background = 0
        self._background = loop.create_future()
        super().__init__(device, policy, journal, on_settled=self._settled_threadsafe, **kw)
        self._pending_background = 1 + (self._notifier is not None)
        self.device = device
        self._loop = loop
        self._ended_future: asyncio.Future[None] = loop.create_future()
        self._events: asyncio.Queue[EventRecord | None] = asyncio.Queue()

    def _settled_threadsafe(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._one_settled)

    def _one_settled(self) -> None:
        self._pending_background -= 1
        if self._pending_background <= 0 and not self._background.done():
            self._background.set_result(None)

    async def set_amplitude(self, channel: int, ma: float) -> None:
        """Change a channel's amplitude (see ``Session.set_amplitude``)."""
        await self.device._drive(steps.set_amplitude(self._policy, channel, ma))

    async def stop(self, reason: StopReason = StopReason.OPERATOR, detail: str = "") -> None:
        """Output off now; returns once the unit acknowledged it."""
        await self.device._drive(steps.stop_session(self._policy, reason, detail))

    def request_stop(self, reason: StopReason = StopReason.OPERATOR, detail: str = "") -> None:
        """Ask for a stop from any thread, without blocking (a signal handler)."""
        self.device._post(steps.posted_stop(self._policy, reason, detail))

    async def events(self) -> AsyncIterator[EventRecord]:
        """Every record of the session, in order, from the first; ends after "ended"."""
        while True:
            record = await self._events.get()
            if record is None:
                return
            yield record

    async def wait(self) -> SessionRecord:
        """Wait until the session has ended and its record is in the journal; return
        it. Cancelling the waiting task stops output."""
        try:
            await asyncio.shield(self._ended_future)
        except asyncio.CancelledError:  # STOP now: the loop may not run another turn
            if not self.state.is_end:
                self.device._run_posted(
                    steps.posted_stop(
                        self._policy,
                        StopReason.HOST_SHUTDOWN,
                        "the task waiting for the session was cancelled",
                    )
                )
            raise
        await self._background
        self._close_journal()
        return self.record()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if not self.state.is_end:
                await self.stop(
                    StopReason.HOST_SHUTDOWN, "the program left the session's async with block"
                )
        finally:
            await self.wait()  # (a unit that would not stop still ends its record: faulted)

    def _recorded(self, record: EventRecord, state: str) -> None:
        super()._recorded(record, state)
        if not self._loop.is_closed():  # (a closed loop: the program is ending)
            self._events.put_nowait(record)

    def _ended(self) -> None:
        super()._ended()
        if self._loop.is_closed():
            return
        self._events.put_nowait(None)
        if not self._ended_future.done():
            self._ended_future.set_result(None)

    def __repr__(self) -> str:
        return f"<AsyncSession {self.id} {self.state} on {self.device.url}>"
