"""Operations as steps, sans I/O (issue 20): how both runners share one copy of
every operation that waits, the way h11 leaves the I/O to its caller.

A step generator yields ``Touch`` (change the core now, under the runner's lock or
on its loop), ``Ask`` (a request: its result once the unit answered), ``Block``
(slow work that must never run on a control loop: the journal) and ``Settle``
(wait for a session's record); a runner's ``_drive`` carries each out and sends
back its value, or throws in its exception. ``unwrap`` is the one place where a
request's result (an answer, a refusal, an error value) becomes a message or an
exception. The operations that need a connected runner (handshake, start, close)
are in ``estim.runner``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from estim.core import HostCore, Result
from estim.errors import DeviceFault, EstimError, RemoteProtocolError
from estim.info import UnitStatus
from estim.policy import SessionPolicy
from estim.protocol import Ack, ClearFault, GetStatus, Message, Nack, State, Status, StopReason
from estim.refusals import device_error

T = TypeVar("T")


@dataclass(frozen=True)
class Touch(Generic[T]):
    """Change the core now (the runner's lock held, or on its loop): ``act(core, now)``;
    what the core then says is carried out at once. Its value is ``act``'s."""

    act: Callable[[HostCore, float], T]


@dataclass(frozen=True)
class Ask:
    """A request: ``act(core, now, token)``; its value is the ``Result`` the token is
    resolved with. ``timeout`` (threads only) gives up waiting with TimeoutError."""

    act: Callable[[HostCore, float, object], None]
    timeout: float | None = None


@dataclass(frozen=True)
class Block(Generic[T]):
    """Slow work (opening a journal, a commit): never on a control loop. Its value is
    ``work()``'s."""

    work: Callable[[], T]


@dataclass(frozen=True)
class Settle:
    """Wait until ``session`` has ended and its record is written, for at most
    ``timeout`` seconds (None: as long as it takes)."""

    session: Any  # a SessionHandle (estim.session, which builds on this module)
    timeout: float | None = None


Step = Touch[Any] | Ask | Block[Any] | Settle
Steps = Generator[Step, Any, T]


def unwrap(result: Result, what: str) -> Message:
    """The one boundary where a request's result becomes a message or an exception:
    an error value is raised, a NACK is a ``DeviceError`` naming ``what``."""
    if isinstance(result, EstimError):
        raise result
    if result is None:
        raise RemoteProtocolError(f"no answer to {what} came back from the unit")
    if isinstance(result, Nack):
        raise device_error(result, what)
    return result


def succeeded(result: Result) -> None:
    """A command whose only result is done (None) or an error value."""
    if isinstance(result, EstimError):
        raise result


# --- the single-request operations, and a session's commands ------------------------------


def request(message: Message, what: str, timeout: float | None = None) -> Steps[Message]:
    result = yield Ask(lambda core, now, token: core.request(message, now, token), timeout)
    return unwrap(result, what)


def status() -> Steps[UnitStatus]:
    answer = yield from request(GetStatus(), "status")
    if not isinstance(answer, Status):
        raise RemoteProtocolError(f"the unit answered GET_STATUS with {answer.TYPE.name}")
    return UnitStatus.from_message(answer)


def clear_fault() -> Steps[State]:
    answer = yield from request(ClearFault(), "clear fault")
    if not isinstance(answer, Ack):
        raise RemoteProtocolError(f"the unit answered CLEAR_FAULT with {answer.TYPE.name}")
    return answer.state


def stop(reason: StopReason | int, give_up_after: float) -> Steps[State]:
    """Output off now, whatever else is in flight; resent until acknowledged."""
    result = yield Ask(
        lambda core, now, token: core.stop(reason, now, token, give_up_after=give_up_after)
    )
    succeeded(result)
    if not isinstance(result, Ack | Nack):
        raise RemoteProtocolError(f"no answer to STOP came back from the unit (got {result!r})")
    return result.state


def set_amplitude(
    policy: SessionPolicy, channel: int, ma: float, timeout: float | None = None
) -> Steps[None]:
    result = yield Ask(
        lambda core, now, token: core.set_amplitude(policy, channel, ma, now, token), timeout
    )
    succeeded(result)


def stop_session(policy: SessionPolicy, reason: StopReason, detail: str) -> Steps[None]:
    """Returns once the unit acknowledged the STOP (or the link was given up: its
    watchdog ends output). Raises ``DeviceFault`` if its answer says output is on."""
    text = detail or reason.name.lower().replace("_", " ")
    result = yield Ask(lambda core, now, token: core.stop_session(policy, reason, text, now, token))
    if isinstance(result, DeviceFault):
        raise result


def posted_stop(
    policy: SessionPolicy, reason: StopReason, detail: str
) -> Callable[[HostCore, float], None]:
    """A stop to post from a thread that must not block (a signal handler): the
    runner carries it out on its next turn."""
    text = detail or reason.name.lower().replace("_", " ")
    return lambda core, now: core.stop_session(policy, reason, text, now, None)
