"""What both runners do, once (issue 20): the threaded runner (``estim.device``) and
the asyncio one (``estim.aio``) differ only in how they write bytes, wake up, read
the clock and wait (python-can's Notifier serves threads and asyncio from one class
the same way). Everything else lives here or in ``estim.steps``:

- ``RunnerBase``: the state a connected unit has whatever runs it, and carrying out
  what the core says (``_dispatch``: write, wake callers, hand records to sessions,
  end sessions);
- the operations that need a connected runner, as steps (``estim.steps``): the
  handshake (``hello``, ``check_orphan``), ``start``, the ``estim stop`` reply
  (``stop_everything``) and ``close``;
- ``open_unit``: checking connect's options and opening the port for a host.

An interruption (Ctrl-C while a thread waits, a cancelled task) is thrown into the
steps where they wait, so their clean-up runs; a runner whose waiting was cancelled
goes on carrying out ``Touch`` steps at once and throws the cancellation in at every
step that would wait, so the clean-up never needs the loop again.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import serial

import estim.steps as steps
from estim.bounds import checked, whole
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
from estim.errors import EstimError, LinkError, LinkLost, LinkTimeout
from estim.info import UnitInfo
from estim.journal import Journal
from estim.limits import ClinicLimits, Limits
from estim.owner import Owner
from estim.plan import SessionPlan
from estim.policy import SessionPolicy
from estim.ports import open_port, port_clock, port_reader, port_writer, write_frames
from estim.protocol import OUTPUT_STATES, StopReason
from estim.protocol.host import RESPONSE_TIMEOUT_S, RETRIES
from estim.session import Judged, SessionHandle, judge, new_policy
from estim.steps import Ask, Block, Settle, Steps, Touch

if TYPE_CHECKING:
    from estim.clock import Clock

log = logging.getLogger("estim.runner")

#: why a session whose start was interrupted (Ctrl-C, a cancelled task) was stopped
INTERRUPTED = "the start was interrupted (Ctrl-C, or the task starting it was cancelled)"
#: how long closing a device waits for each of its sessions to end
CLOSE_WAIT_S = 5.0


def hello(runner: RunnerBase) -> Steps[None]:
    """GREETING and HELLO, asked again while the answers arrive damaged; the unit's
    identity and limits become the runner's."""
    yield Touch(lambda core, now: runner._write(GREETING))
    asked = 1
    answer = yield Ask(lambda core, now, token: core.request(HELLO, now, token))
    while ask_hello_again(answer, runner.stats, asked):
        asked += 1
        answer = yield Ask(lambda core, now, token: core.request(HELLO, now, token))
    runner.info = unit_from_hello(runner.url, answer, runner.stats)
    runner.limits = Limits(runner.info, runner.clinic)


def check_orphan(runner: RunnerBase) -> Steps[None]:
    """A unit found delivering output has lost its host: whoever could open the port
    now is not running that session. A reconnect means output zero (SAFETY.md 4).
    STATUS is asked again when its answer is lost, as HELLO is."""
    found = None
    for asked in range(1, STATUS_REQUESTS + 1):
        try:
            found = yield from steps.status()
            break
        except LinkTimeout:
            if asked == STATUS_REQUESTS:
                raise
    if found is not None:
        runner.session_floor = max(runner.session_floor, found.session_id)
    if found is not None and found.state in OUTPUT_STATES:
        log.warning(
            "the unit on %s was delivering output for session %08x with no host; stopping it",
            runner.url,
            found.session_id,
        )
        yield from steps.stop(StopReason.HOST_SHUTDOWN, 0.5)
        runner.stopped_orphan = found.session_id


def start(
    runner: RunnerBase,
    plan: SessionPlan,
    journal: Journal | None,
    *,
    heartbeat: float | None,
    status_every: float,
    make_session: Callable[[SessionPolicy, Journal, bool], SessionHandle],
) -> Steps[SessionHandle]:
    """Judge the start's arguments, claim the unit (one session at a time), commit
    "start requested" off the control loop (opening the default journal there too),
    then START; returns the session once the unit accepted it. An interruption while
    waiting stops the session it made, before the exception goes on."""
    judged = judge(runner.limits, plan, heartbeat=heartbeat, status_every=status_every)
    now = yield Touch(_claim)
    owns = journal is None
    try:
        policy, journal = yield Block(lambda: _commit(runner, judged, journal, now))
    except BaseException:
        yield Touch(lambda core, now: core.release())
        raise
    session = make_session(policy, journal, owns)
    yield Touch(lambda core, now: runner._sessions.__setitem__(policy, session))
    try:
        result = yield Ask(lambda core, now, token: core.start(policy, now, token))
    except BaseException:  # STOP now (or end it, if START never went): the program may end
        yield Touch(
            lambda core, now: core.stop_session(
                policy, StopReason.HOST_SHUTDOWN, INTERRUPTED, now, None
            )
        )
        raise
    if isinstance(result, EstimError):
        yield Settle(session)  # its end is recorded before the error reaches the caller
        raise result
    return session


def _claim(core: HostCore, now: float) -> float:
    core.claim()  # one start at a time: UnitBusy before anything is written or sent
    return now


def _commit(
    runner: RunnerBase, judged: Judged, journal: Journal | None, now: float
) -> tuple[SessionPolicy, Journal]:
    """The blocking part of a start: the default journal opened (its recovery may
    wait on another program's lock) and "start requested" committed."""
    opened = Journal() if journal is None else journal
    try:
        policy = new_policy(runner, runner._core, judged, opened, now, above=runner.session_floor)
        runner.session_floor = policy.session_id  # (the claim keeps starts one at a time)
        return policy, opened
    except BaseException:
        if journal is None:
            opened.close()
        raise


def stop_everything(runner: RunnerBase) -> Steps[str]:
    """``estim stop`` from another process found this unit: stop its sessions, or the
    unit itself; the one line to answer."""
    sessions = yield Touch(lambda core, now: list(runner._sessions.values()))
    for session in sessions:
        yield from steps.stop_session(
            session._policy, StopReason.OPERATOR, "stopped with estim stop"
        )
    where = f"{runner.url}, held by process {os.getpid()}"
    if sessions:
        return f"session {', '.join(s.id for s in sessions)} on {where}"
    state = yield from steps.stop(StopReason.OPERATOR, 0.5)
    return f"no session was running on {where}; the unit was told to stop and is {state.name}"


def close(runner: RunnerBase, detail: str = "the device was closed") -> Steps[None]:
    """Stop every live session (``detail`` is why) and wait for its record, then any
    output: best effort, the unit's watchdog is the backstop."""
    sessions = yield Touch(lambda core, now: list(runner._sessions.values()))
    for session in sessions:
        yield from steps.stop_session(session._policy, StopReason.HOST_SHUTDOWN, detail)
        try:
            yield Settle(session, CLOSE_WAIT_S)
        except TimeoutError:
            log.warning("session %s did not end within %g s of closing", session.id, CLOSE_WAIT_S)
    lost = yield Touch(lambda core, now: core.lost)
    if lost is None:
        try:
            yield from steps.stop(StopReason.HOST_SHUTDOWN, 0.5)
        except LinkError:
            pass  # the unit's watchdog is the backstop


# --- the state of a connected unit, whatever runs it ----------------------------------------


class RunnerBase:
    """A connected unit's host side, for either runner: its port, clock, core and
    sessions, and carrying out what the core says. A runner adds how it waits."""

    def __init__(
        self,
        port: serial.SerialBase,
        clock: Clock,
        *,
        url: str,
        core: HostCore,
        clinic: ClinicLimits | None,
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
        #: the highest session id the unit is known to have run: every new one is above
        #: it (PROTOCOL.md 10, 1.4), so the unit's floor of ended ids never refuses one
        self.session_floor = 0
        self._core = core
        self._sessions: dict[SessionPolicy, Any] = {}
        self._owner: Owner | None = None
        self._closed = False
        self._read = port_reader(port, clock)
        self._write = port_writer(port)

    def __repr__(self) -> str:
        info = getattr(self, "info", None)
        who = f"{info.model} {info.serial_number}" if info else "unit"
        return f"<{type(self).__name__} {who} on {self.url}>"

    @property
    def lost(self) -> LinkLost | None:
        """Why the link is gone for good (the port failed, or the unit cannot be
        reached any more), or None."""
        return self._core.lost

    @property
    def stats(self) -> Any:
        return self._core.conn.stats

    @property
    def sessions(self) -> list[SessionHandle]:
        """The sessions live on this unit (one at most)."""
        return list(self._sessions.values())

    # -- what a runner supplies -----------------------------------------------------------

    def _resolve(self, token: object, result: Result) -> None:
        """Wake the caller waiting on ``token`` with ``result``."""
        raise NotImplementedError

    def _post(self, act: Callable[[HostCore, float], None], *, urgent: bool = True) -> None:
        """From any thread, without blocking: do ``act(core, now)`` on the runner's
        next turn."""
        raise NotImplementedError

    # -- what the core said, carried out -------------------------------------------------

    def _dispatch(self, out: Output) -> BaseException | None:
        """Do what the core said, in its order (under the runner's lock, or on its
        loop): write, build the records, wake callers, hand the records on, end
        sessions. Returns the error that failed the port, if a write did."""
        failed = write_frames(self._write, out.writes, self.url)
        records = out.records()
        for token, result in out.resolved:
            self._resolve(token, result)
        for policy, record, state in records:
            session = self._sessions.get(policy)
            if session is not None:
                session._recorded(record, state)
        for policy in out.ended:
            session = self._sessions.pop(policy, None)
            if session is not None:
                session._ended()
        return failed

    def _lose_port(self, err: BaseException, now: float) -> None:
        """The port itself failed: every caller and session learns it; nothing more
        is written (the port is what failed)."""
        self._core.port_failed(LinkLost(f"lost the port {self.url}: {err}"), now)
        out = self._core.take()
        out.writes.clear()
        self._dispatch(out)


def open_unit(
    url: str,
    *,
    baudrate: int = 115200,
    response_timeout: float = RESPONSE_TIMEOUT_S,
    retries: int = RETRIES,
) -> tuple[serial.SerialBase, Clock | None, HostCore]:
    """Check connect's options, open ``url`` for a host, and make its core: the port,
    the clock the port runs on (``sim://`` on a ``ManualClock`` brings its own), the
    core. Raises ``OptionError`` or the typed errors of ``estim.ports.open_port``."""
    response_timeout = checked("response_timeout", response_timeout)
    retries = whole("retries", retries)
    baudrate = whole("baudrate", baudrate)
    port = open_port(url, baudrate=baudrate)
    core = HostCore(
        name=url.strip(),
        first_seq=random.randrange(0x10000),  # PROTOCOL.md 10: a new host starts at random
        response_timeout=response_timeout,
        retries=retries,
    )
    return port, port_clock(port), core


__all__ = ["RunnerBase", "check_orphan", "close", "hello", "open_unit", "start", "stop_everything"]
