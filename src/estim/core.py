"""The host, sans I/O: the one object a runner drives for one connected unit.

It joins the connection state (``estim.protocol.host``), the session policies
(``estim.policy``) and the callers waiting for answers. A runner feeds it bytes,
the time and requests, then ``take()``s what to do: bytes to write, callers to
wake, records to journal and notify, sessions that ended. The threaded runner
(``estim.device``) and the asyncio runner (``estim.aio``) are thin layers over
this, so whatever both need lives here, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from estim.errors import (
    EstimError,
    LinkError,
    LinkLost,
    LinkTimeout,
    NoAnswer,
    RemoteProtocolError,
    UnitBusy,
    VersionMismatch,
)
from estim.info import UnitInfo
from estim.policy import SessionPolicy
from estim.protocol import (
    PROTOCOL_VERSION,
    Answer,
    DeviceInfo,
    ErrorCode,
    Hello,
    HostConnection,
    Message,
    Nack,
    Stop,
    StopReason,
)
from estim.protocol.host import RESPONSE_TIMEOUT_S, RETRIES, ConnectionStats, Retries
from estim.record import EventRecord

#: what a woken caller gets: the answer, None (done), or the error to raise
Result = Message | EstimError | None


@dataclass
class Output:
    """What a runner must now do, in this order: write ``writes``, then build
    ``records()``, wake ``resolved``, hand the records on, then see to ``ended``."""

    writes: list[bytes] = field(default_factory=list)
    resolved: list[tuple[object, Result]] = field(default_factory=list)
    #: sessions with new records, built by ``records()``
    recorded: list[SessionPolicy] = field(default_factory=list)
    ended: list[SessionPolicy] = field(default_factory=list)

    def records(self) -> list[tuple[SessionPolicy, EventRecord, str]]:
        """The new records (each once). Built after the writes are out: building one
        takes longer than writing a frame, and a STOP must not wait for its record."""
        return [
            (policy, record, state)
            for policy in self.recorded
            for record, state in policy.take_records()
        ]

    def __bool__(self) -> bool:
        return bool(self.writes or self.resolved or self.recorded or self.ended)


class _Call:
    """A caller's request: who to wake with the answer."""

    __slots__ = ("give_up_after", "sent_at", "token")

    def __init__(self, token: object, sent_at: float, give_up_after: float | None = None) -> None:
        self.token = token
        self.sent_at = sent_at
        #: STOP only: resent until acknowledged or the unit is silent this long
        self.give_up_after = give_up_after


class HostCore:
    """One unit's host side. Not thread-safe: a runner serialises the calls."""

    def __init__(
        self,
        *,
        name: str,
        first_seq: int,
        response_timeout: float = RESPONSE_TIMEOUT_S,
        retries: int = RETRIES,
    ) -> None:
        self.name = name
        self.conn = HostConnection(
            first_seq=first_seq, response_timeout=response_timeout, retries=retries
        )
        self.sessions: list[SessionPolicy] = []
        #: a start holds this from before its journal commit until ``start``: one
        #: session at a time per unit, its CONFIGUREs and START never interleaved
        self._starting = False
        #: set for good when the port failed or the unit cannot be reached any more
        self.lost: LinkLost | None = None
        self._owners: dict[int, SessionPolicy | _Call] = {}
        self._out = Output()

    # -- the view a session policy has of the link -------------------------------------------

    @property
    def last_rx(self) -> float | None:
        return self.conn.last_rx

    def send(
        self, message: Message, now: float, owner: SessionPolicy, *, retries: Retries = None
    ) -> int:
        request, wire = self.conn.send(message, now, retries=retries)
        self._owners[request.seq] = owner
        if self.lost is None:
            self._out.writes.append(wire)
        return request.seq

    def cancel(self, seq: int) -> None:
        self.conn.cancel(seq)
        self._owners.pop(seq, None)

    # -- callers ------------------------------------------------------------------------------

    def request(
        self, message: Message, now: float, token: object, *, retries: Retries = None
    ) -> None:
        """Send ``message``; ``token`` is resolved with its answer, ``LinkTimeout``
        after its attempts, or at once with ``LinkLost`` if the link is gone."""
        if self.lost is not None:
            self._out.resolved.append((token, self.lost))
            return
        request, wire = self.conn.send(message, now, retries=retries)
        self._owners[request.seq] = _Call(token, now)
        self._out.writes.append(wire)

    def stop(
        self, reason: StopReason | int, now: float, token: object, *, give_up_after: float
    ) -> None:
        """STOP now, whatever else is in flight; resent until acknowledged, or until the
        unit has been silent for ``give_up_after`` (by then its watchdog has acted):
        then the link is lost and ``token`` gets ``LinkLost``."""
        if self.lost is not None:
            self._out.resolved.append((token, self.lost))
            return
        request, wire = self.conn.send(Stop(reason=int(reason)), now, retries="forever")
        self._owners[request.seq] = _Call(token, now, give_up_after)
        self._out.writes.append(wire)

    def claim(self) -> None:
        """Reserve the unit for one start (SAFETY.md 9): raises ``UnitBusy`` while
        a session is live or another start holds the claim. ``start`` (or
        ``release``) gives it back."""
        if self._starting:
            raise UnitBusy(
                f"the unit on {self.name} is busy: another session is starting on it; "
                "wait for it to end, or stop it first"
            )
        live = next((p for p in self.sessions if not p.done), None)
        if live is not None:
            raise UnitBusy(
                f"the unit on {self.name} is busy with session {live.id} ({live.state}); "
                "wait for it to end, or stop it first"
            )
        self._starting = True

    def release(self) -> None:
        """A claimed start that will not happen (its journal commit failed)."""
        self._starting = False

    def start(self, policy: SessionPolicy, now: float, token: object) -> None:
        """Run ``policy``'s session, under the claim its caller holds; ``token`` is
        resolved when START is accepted or the session could not start."""
        if not self._starting:
            self.claim()  # (a caller that did not claim first: the same rule)
        self._starting = False
        self.sessions.append(policy)
        if self.lost is not None:  # (lost while its first record was being committed)
            policy.start_token = token
            policy.on_link_down(self.lost, now)
        else:
            policy.begin(now, token)
        self._collect()

    # -- a running session's commands: safe to call after it ended --------------------------

    def stop_session(
        self, policy: SessionPolicy, reason: StopReason, detail: str, now: float, token: object
    ) -> None:
        """Stop ``policy``'s session; one whose start was claimed but never asked (an
        interrupted start) ends at once, nothing sent, and gives the claim back."""
        if policy not in self.sessions and not policy.done:
            self._starting = False
            self.sessions.append(policy)
        if policy in self.sessions:
            policy.stop(reason, detail, now, token)
            self._collect()
        else:
            self._out.resolved.append((token, None))

    def set_amplitude(
        self, policy: SessionPolicy, channel: int, ma: float, now: float, token: object
    ) -> None:
        if policy in self.sessions:
            policy.set_amplitude(channel, ma, now, token)
            self._collect()
        else:
            self._out.resolved.append((token, policy.not_running()))

    def journal_durable(self, policy: SessionPolicy, n: int) -> None:
        policy.journal_durable(n)

    def journal_failed(self, policy: SessionPolicy, error: str, now: float) -> None:
        if policy in self.sessions:
            policy.journal_failed(error, now)
            self._collect()
        elif policy.journal_error is None:
            policy.journal_error = error

    def callback_failed(self, policy: SessionPolicy, error: str, now: float) -> None:
        if policy in self.sessions:
            policy.callback_failed(error, now)
            self._collect()

    # -- inputs --------------------------------------------------------------------------------

    def receive(self, data: bytes, now: float, *, line_time: float | None = None) -> None:
        for item in self.conn.receive(data, now, line_time=line_time):
            if isinstance(item, Answer):
                owner = self._owners.pop(item.request.seq, None)
                if isinstance(owner, SessionPolicy):
                    self._safely(owner, now, owner.on_answer, item.request, item.response, now)
                elif owner is not None:
                    self._out.resolved.append((owner.token, item.response))
            else:
                for policy in list(self.sessions):
                    self._safely(policy, now, policy.on_event, item, now)
        self._collect()

    def _safely(
        self, policy: SessionPolicy, now: float, act: Callable[..., None], *args: Any
    ) -> None:
        """One call into a session's policy from the I/O side. An exception there is a
        bug in estim (or a unit that lies in a way no rule foresaw): the session is
        stopped as a host error, with the exception in its record, and the runner goes
        on. (It killed the I/O thread: no heartbeats, no end, a caller waiting for ever;
        only the unit's watchdog stopped output.)"""
        try:
            act(*args)
        except Exception as err:
            self._policy_failed(policy, err, now)

    def _policy_failed(self, policy: SessionPolicy, err: Exception, now: float) -> None:
        why = f"internal error in estim: {err!r}; output was stopped (please report it)"
        try:
            policy.stop(StopReason.HOST_ERROR, why, now, outcome="aborted")
            return
        except Exception:
            pass
        # the policy cannot even stop: a STOP straight to the unit, and the session ends
        # as if its link were lost, saying why
        _, wire = self.conn.send(Stop(reason=int(StopReason.HOST_ERROR)), now, retries="forever")
        if self.lost is None:
            self._out.writes.append(wire)
        with contextlib.suppress(Exception):
            policy.on_link_down(LinkLost(why), now)

    def tick(self, now: float) -> None:
        """Retransmissions, expiries, STOPs given up, and each session's timers."""
        wires, expired = self.conn.poll(now)
        if self.lost is None:
            self._out.writes += wires
        for gone in expired:
            owner = self._owners.pop(gone.request.seq, None)
            if isinstance(owner, SessionPolicy):
                self._safely(owner, now, owner.on_expired, gone.request, now)
            elif owner is not None:
                self._out.resolved.append(
                    (
                        owner.token,
                        LinkTimeout(
                            f"no answer from the unit on {self.name} to {gone.request.TYPE.name} "
                            f"after {gone.attempts} attempts of "
                            f"{self.conn.response_timeout * 1000:.0f} ms; check the cable and "
                            "the unit's power"
                        ),
                    )
                )
        self._give_up_stops(now)
        for policy in list(self.sessions):
            self._safely(policy, now, policy.tick, now)
        self._collect()

    def _give_up_stops(self, now: float) -> None:
        heard = self.conn.last_rx
        for seq, owner in list(self._owners.items()):
            if not isinstance(owner, _Call) or owner.give_up_after is None:
                continue
            since = max(owner.sent_at, heard if heard is not None else owner.sent_at)
            if now - since >= owner.give_up_after:
                error = LinkLost(
                    f"STOP was not acknowledged by the unit on {self.name}: nothing heard for "
                    f"{owner.give_up_after:g} s; its watchdog turns output off"
                )
                self.cancel(seq)
                self._out.resolved.append((owner.token, error))
                self._lose(error, now)

    def port_failed(self, error: LinkLost, now: float) -> None:
        """The port itself failed: every caller and session learns it at once."""
        self._lose(error, now)
        self._collect()

    def _lose(self, error: LinkLost, now: float) -> None:
        if self.lost is None:
            self.lost = error
        for seq, owner in list(self._owners.items()):
            if isinstance(owner, _Call):
                self._out.resolved.append((owner.token, self.lost))
                self.cancel(seq)
        for policy in list(self.sessions):
            policy.on_link_down(self.lost, now)

    # -- what to do now -----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        soonest = self.conn.next_deadline()
        for policy in self.sessions:
            due = policy.next_deadline()
            if due is not None and (soonest is None or due < soonest):
                soonest = due
        heard = self.conn.last_rx
        for owner in self._owners.values():
            if isinstance(owner, _Call) and owner.give_up_after is not None:
                since = max(owner.sent_at, heard if heard is not None else owner.sent_at)
                due = since + owner.give_up_after
                if soonest is None or due < soonest:
                    soonest = due
        return soonest

    def take(self) -> Output:
        """Everything to do since the last ``take``; the runner does it in order."""
        self._collect()
        out, self._out = self._out, Output()
        return out

    def _collect(self) -> None:
        finished: list[SessionPolicy] = []
        for policy in self.sessions:
            if policy.has_records and policy not in self._out.recorded:
                self._out.recorded.append(policy)
            if policy.resolved:
                self._out.resolved += policy.resolved
                policy.resolved.clear()
            if policy.done:
                finished.append(policy)
        for policy in finished:
            self.sessions.remove(policy)
            self._out.ended.append(policy)
            if policy.unit_unreachable and self.lost is None:
                self.lost = LinkLost(policy.stop_reason or "the unit cannot be reached")


# --- the handshake, for either runner ---------------------------------------------------

#: the first bytes a host sends: a 0x00 ends any partial frame the unit holds, then HELLO
GREETING = b"\x00"
HELLO = Hello(min_version=PROTOCOL_VERSION, max_version=PROTOCOL_VERSION)


#: HELLO requests tried in all (each with its resends) while the unit's answers arrive
#: damaged: on a noisy line 3 damaged answers in a row are not rare (DEVICE_INFO is
#: ~80 bytes), and HELLO changes nothing, so asking again is safe
HELLO_REQUESTS = 3


#: GET_STATUS requests at connect (each with its resends), for the check of an output
#: left running: it changes nothing, so on a noisy line it is asked again as HELLO is
STATUS_REQUESTS = 3


#: GET_STATUS requests at connect (each with its resends), for the check of an output
#: left running: it changes nothing, so on a noisy line it is asked again as HELLO is
STATUS_REQUESTS = 3


def ask_hello_again(answer: Result, stats: ConnectionStats, asked: int) -> bool:
    """Whether to send a new HELLO after ``asked`` went unanswered: only when damaged
    frames arrived, no more of them than HELLOs were sent (damaged answers; a device
    that is not an estim unit, a GPS say, sends a stream of them), so a silent or
    foreign port fails as fast as before."""
    sent = asked * (1 + RETRIES)
    damaged = stats.rejected_frames
    return isinstance(answer, LinkTimeout) and 0 < damaged <= sent and asked < HELLO_REQUESTS


def unit_from_hello(url: str, answer: Result, stats: ConnectionStats) -> UnitInfo:
    """What the answer to HELLO means: the unit's identity and limits, or the typed
    error whose one line says what to do."""
    if isinstance(answer, LinkError):
        bad = stats.rejected_frames
        if bad and stats.valid_frames:
            raise NoAnswer(
                f"the unit on {url} answers, but {bad} of its frames arrived damaged and its "
                "answer to HELLO never came through: check the cable and its connectors"
            )
        if bad:
            raise NoAnswer(
                f"{url} sends bytes, but no estim frame ({bad} bad frames): is this the "
                "estim unit's port, at the right baud rate (115200)?"
            )
        raise NoAnswer(f"no estim unit answered on {url}; check the cable, the power and the port")
    if isinstance(answer, EstimError):
        raise answer
    if isinstance(answer, Nack) and answer.error == ErrorCode.UNSUPPORTED_VERSION:
        raise VersionMismatch(
            f"the unit on {url} speaks a protocol version this software (version "
            f"{PROTOCOL_VERSION}) does not; update estim or the unit's firmware"
        )
    if not isinstance(answer, DeviceInfo):
        name = answer.TYPE.name if answer is not None else "nothing"
        raise RemoteProtocolError(f"the unit on {url} answered HELLO with {name}")
    if answer.protocol_version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"the unit on {url} chose protocol version {answer.protocol_version}; this software "
            f"speaks {PROTOCOL_VERSION}; update estim or the unit's firmware"
        )
    info = UnitInfo.from_message(answer)
    problems = info.problems()
    if problems:
        raise RemoteProtocolError(
            f"the unit on {url} reports {'; '.join(problems)}: that cannot be right, so it is "
            "not used; check its firmware"
        )
    return info
