"""Both runners behind one synchronous face, so the same session tests run against
the threaded runner and the asyncio one (issue 10).

``AsyncFacade`` runs an ``estim.aio`` device on a ``ManualClockLoop`` in a thread
that takes part in the manual clock. Every coroutine method of the device, and of
the sessions it starts, is called through it as a plain method: the coroutine runs
on the loop and the test thread waits on the clock, driving virtual time exactly
as it does for the threaded runner. Everything else is the asyncio objects' own.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from estim import aio
from estim.clock import ManualClock
from estim.device import connect as threaded_connect

T = TypeVar("T")
RUNNERS = ["threads", "asyncio"]


class _Synchronous:
    """``target`` with each coroutine method made a plain one (``timeout=`` waits
    that long on the clock, as the threaded runner's calls do)."""

    def __init__(self, facade: AsyncFacade, target: Any) -> None:
        self._facade = facade
        self._target = target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not inspect.iscoroutinefunction(value):
            return value

        def call(*args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
            return self._facade.run(value(*args, **kwargs), timeout)

        return call


class SessionFacade(_Synchronous):
    @property
    def events(self) -> list[Any]:  # the threaded Session's list, not AsyncSession.events()
        return list(self._target._policy.events)

    def __enter__(self) -> SessionFacade:
        return self

    def __exit__(self, *exc: object) -> None:
        self._facade.run(self._target.__aexit__(*exc))


class AsyncFacade(_Synchronous):
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
            super().__init__(self, self.run(aio.connect(url, **options)))
        except BaseException:
            self._stop_loop()
            raise
        self._device: aio.AsyncDevice = self._target

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


__all__ = ["RUNNERS", "AsyncFacade", "SessionFacade", "connector", "hang_the_loop"]
