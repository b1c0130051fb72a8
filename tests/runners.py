"""Both runners behind one synchronous face, so the same session tests run against
the threaded runner and the asyncio one (issue 10).

``AsyncFacade`` runs an ``estim.aio`` device on a ``ManualClockLoop`` in a thread
that takes part in the manual clock; each call submits a coroutine and waits on
the clock, so the test thread drives virtual time exactly as it does for the
threaded runner. Attributes the facade does not define are the asyncio objects'
own (``port``, ``_core``, ``_read``, ``_policy``...).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from estim import aio
from estim.clock import ManualClock
from estim.device import connect as threaded_connect
from estim.protocol import StopReason
from estim.record import SessionRecord

T = TypeVar("T")
RUNNERS = ["threads", "asyncio"]


class AsyncFacade:
    def __init__(
        self,
        url: str,
        clock: ManualClock,
        *,
        loop: aio.ManualClockLoop | None = None,
        **options: Any,
    ) -> None:
        self.clock = clock
        self._loop = loop or aio.ManualClockLoop(clock)
        self._thread = clock.start_thread(self._loop.run_forever, name="estim-test-loop")
        try:
            self._device: aio.AsyncDevice = self.run(aio.connect(url, **options))
        except BaseException:
            self._stop_loop()
            raise

    def run(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``awaitable`` on the loop; wait on the clock (which drives it)."""

        async def body() -> T:
            return await awaitable

        done = self.clock.signal()
        future = asyncio.run_coroutine_threadsafe(body(), self._loop)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"not done within {timeout} s")
        return future.result()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._device, name)

    def status(self) -> Any:
        return self.run(self._device.status())

    def clear_fault(self) -> Any:
        return self.run(self._device.clear_fault())

    def stop(self, reason: Any = StopReason.OPERATOR, **kw: Any) -> Any:
        return self.run(self._device.stop(reason, **kw))

    def start(self, plan: Any, **kw: Any) -> SessionFacade:
        return SessionFacade(self, self.run(self._device.start(plan, **kw)))

    def close(self) -> None:
        try:
            self.run(self._device.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()

    def __enter__(self) -> AsyncFacade:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SessionFacade:
    def __init__(self, device: AsyncFacade, session: aio.AsyncSession) -> None:
        self.device = device
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    @property
    def events(self) -> list[Any]:
        return list(self._session._policy.events)

    def set_amplitude(self, channel: int, ma: float, *, timeout: float = 2.0) -> None:
        self.device.run(self._session.set_amplitude(channel, ma), timeout)

    def stop(self, reason: StopReason = StopReason.OPERATOR, detail: str = "") -> None:
        self.device.run(self._session.stop(reason, detail))

    def wait(self, timeout: float | None = None) -> SessionRecord:
        return self.device.run(self._session.wait(), timeout)

    def __enter__(self) -> SessionFacade:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.state.is_end:
            self.stop(StopReason.HOST_SHUTDOWN, "the program left the session's with block")
        self.wait()


def connector(runner: str, clock: ManualClock) -> Callable[..., Any]:
    """``connect(url, **options)`` for ``runner``, on the unit's manual clock."""
    if runner == "threads":
        return threaded_connect
    return lambda url, **options: AsyncFacade(url, clock, **options)


def hang_the_loop(device: Any, clock: ManualClock, seconds: float) -> None:
    """Hang the session loop once for ``seconds`` (virtual): no heartbeat goes out
    meanwhile. The threaded runner's loop stalls in its port read, the asyncio
    runner's event loop in a callback, where each can really stall."""
    if isinstance(device, AsyncFacade):
        device._loop.call_soon_threadsafe(clock.sleep, seconds)
        return
    read = device._read

    def stuck_once(timeout: float | None) -> tuple[bytes, float]:
        device._read = read
        clock.sleep(seconds)
        return read(timeout)

    device._read = stuck_once
