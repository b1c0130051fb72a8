"""A session's states: one table-driven machine with typed events (h11's ``_state``
is the model), so a state changes only by ``fire(event)`` and only as the tables
say.

Two roles, as h11 has ours and theirs:

- ``Host``: what the host is doing for the session (configuring the unit's
  channels, waiting for START's answer, live, stopping, recovering a silent link,
  done); the policy's timers depend on it;
- ``SessionState`` (public, ``session.state``): what the session is, as the unit
  reports it, and how it ended.

Theory of operation
-------------------
A session starts in STARTING while the host configures the unit and sends START.
Once the unit accepts it, output ramps up (RAMPING), holds (RUNNING), and ramps
down to zero at the dwell deadline (RAMPING_DOWN). Every path ends in exactly one
end state, and no end state is ever left:

COMPLETED    the dwell ran out: the unit's own deadline (COMPLETED event) or the
             host's dwell timer (STOP DWELL_ELAPSED), whichever came first
STOPPED      the operator stopped it (a key, Ctrl-C, a signal, a ``with`` block)
ABORTED      a host-side failure stopped it (journal write, an error in a callback)
FAULTED      the unit latched a fault (lead-off, over-current, watchdog, e-stop)
LINK_LOST    the link to the unit failed; the unit's watchdog turned output off
REFUSED      the unit (or the host) refused to start; no output was delivered
INTERRUPTED  found unfinished in the journal: the host died mid-session (set by the
             journal when it opens, never by a live machine)

An event the tables do not list for a role's current state raises
``IllegalTransition`` (a bug, never a user error): a session can never be in two
states, leave an end state, or skip from STARTING to RUNNING. The unit's own
progress reports (``RampFinished``, ``EndRampBegun``) may come late or out of order on a
lossy line; ``allows`` tells whether one applies, and a report that does not is
ignored by the policy, not forced.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from estim.errors import EstimError


class SessionState(str, Enum):
    STARTING = "starting"
    RAMPING = "ramping"
    RUNNING = "running"
    RAMPING_DOWN = "ramping_down"
    COMPLETED = "completed"
    STOPPED = "stopped"
    ABORTED = "aborted"
    FAULTED = "faulted"
    LINK_LOST = "link_lost"
    REFUSED = "refused"
    INTERRUPTED = "interrupted"

    @property
    def is_end(self) -> bool:
        return self in END_STATES

    def __str__(self) -> str:
        return self.value


END_STATES = frozenset(
    {
        SessionState.COMPLETED,
        SessionState.STOPPED,
        SessionState.ABORTED,
        SessionState.FAULTED,
        SessionState.LINK_LOST,
        SessionState.REFUSED,
        SessionState.INTERRUPTED,
    }
)
LIVE_STATES = frozenset({SessionState.RAMPING, SessionState.RUNNING, SessionState.RAMPING_DOWN})


class Host(Enum):
    """What the host is doing for a session."""

    CONFIGURING = "configuring"  # CONFIGURE_CHANNELs sent, START not yet
    STARTING = "starting"  # START sent, not yet answered
    LIVE = "live"  # heartbeats, the dwell timer, status polls
    STOPPING = "stopping"  # STOP sent: waiting for its answer and the unit's end event
    RECOVERING = "recovering"  # the unit went silent: STOP sent, asking its STATUS
    DONE = "done"


T = TypeVar("T", "Host", "SessionState")


# --- typed events ------------------------------------------------------------------------


class Event:
    """What happens to a session; each kind is a class of its own."""


@dataclass(frozen=True)
class ChannelsConfigured(Event):
    """Every CONFIGURE_CHANNEL was accepted; START goes out."""


@dataclass(frozen=True)
class StartAccepted(Event):
    """The unit accepted START: output is on, ramping."""


@dataclass(frozen=True)
class RampFinished(Event):
    """The unit reports the start ramp done."""


@dataclass(frozen=True)
class EndRampBegun(Event):
    """The unit reports the end ramp begun."""


@dataclass(frozen=True)
class StopSent(Event):
    """The host sent STOP (an operator, a failure, the dwell timer, a fault)."""


@dataclass(frozen=True)
class UnitSilent(Event):
    """The unit has been silent for a watchdog period: STOP sent, its STATUS asked."""


#: how a session can end, and the end state each means
OUTCOMES: dict[str, SessionState] = {
    "completed": SessionState.COMPLETED,
    "stopped": SessionState.STOPPED,
    "aborted": SessionState.ABORTED,
    "fault": SessionState.FAULTED,
    "link_lost": SessionState.LINK_LOST,
    "start_refused": SessionState.REFUSED,
}


@dataclass(frozen=True)
class Ended(Event):
    """The session is over; ``outcome`` is a key of ``OUTCOMES``."""

    outcome: str

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise IllegalTransition(f"no such outcome {self.outcome!r}")


# --- the tables ---------------------------------------------------------------------------

H, S = Host, SessionState
_NOT_DONE = (H.CONFIGURING, H.STARTING, H.LIVE, H.STOPPING, H.RECOVERING)

#: (host state, event kind) -> host state
HOST_TRANSITIONS: dict[tuple[Host, type[Event]], Host] = {
    (H.CONFIGURING, ChannelsConfigured): H.STARTING,
    (H.STARTING, StartAccepted): H.LIVE,
    (H.STOPPING, StartAccepted): H.STOPPING,  # a stop came while starting
    (H.RECOVERING, StartAccepted): H.RECOVERING,  # the answer came while recovering
    (H.STARTING, StopSent): H.STOPPING,
    (H.LIVE, StopSent): H.STOPPING,
    (H.STOPPING, StopSent): H.STOPPING,
    (H.RECOVERING, StopSent): H.RECOVERING,
    **{(h, UnitSilent): H.RECOVERING for h in _NOT_DONE},
    **{(h, Ended): H.DONE for h in _NOT_DONE},
}

#: (session state, event kind) -> session state; ``Ended`` goes by its outcome
STATE_TRANSITIONS: dict[tuple[SessionState, type[Event]], SessionState] = {
    (S.STARTING, StartAccepted): S.RAMPING,
    (S.RAMPING, RampFinished): S.RUNNING,
    (S.RAMPING, EndRampBegun): S.RAMPING_DOWN,
    (S.RUNNING, EndRampBegun): S.RAMPING_DOWN,
}

#: end states reachable from each state: before output went on, a session cannot
#: have completed a dwell
_ENDS = {
    S.STARTING: {"start_refused", "stopped", "aborted", "fault", "link_lost"},
    **{s: {"completed", "stopped", "aborted", "fault", "link_lost"} for s in LIVE_STATES},
}

#: which role each kind of event moves
_HOST_EVENTS = (ChannelsConfigured, StartAccepted, StopSent, UnitSilent, Ended)
_STATE_EVENTS = (StartAccepted, RampFinished, EndRampBegun, Ended)


class IllegalTransition(EstimError, RuntimeError):
    """A transition the tables do not allow: a bug, never a user error."""


class SessionStates:
    """One session's two roles; ``fire`` is the only way either changes."""

    def __init__(self) -> None:
        self.host = Host.CONFIGURING
        self.state = SessionState.STARTING
        self.history: list[tuple[Host, SessionState, Event]] = []

    @property
    def done(self) -> bool:
        return self.host is Host.DONE

    def allows(self, event: Event) -> bool:
        """Whether ``event`` can happen now (the unit's reports may come late)."""
        try:
            self._next(event)
        except IllegalTransition:
            return False
        return True

    def fire(self, event: Event) -> None:
        host, state = self._next(event)
        self.history.append((self.host, self.state, event))
        self.host, self.state = host, state

    def _next(self, event: Event) -> tuple[Host, SessionState]:
        host, state = self.host, self.state
        kind = type(event)
        if isinstance(event, _HOST_EVENTS):
            host = self._look_up(HOST_TRANSITIONS, (host, kind), event, "the host")
        if isinstance(event, Ended):
            if event.outcome not in _ENDS.get(state, set()):
                raise IllegalTransition(f"a session {state} cannot end {event.outcome}")
            state = OUTCOMES[event.outcome]
        elif isinstance(event, _STATE_EVENTS):
            state = self._look_up(STATE_TRANSITIONS, (state, kind), event, "a session")
        return host, state

    @staticmethod
    def _look_up(
        table: dict[tuple[T, type[Event]], T], key: tuple[T, type[Event]], event: Event, who: str
    ) -> T:
        try:
            return table[key]
        except KeyError:
            raise IllegalTransition(f"{who} in state {key[0]} cannot take {event!r}") from None


__all__ = [
    "END_STATES",
    "LIVE_STATES",
    "ChannelsConfigured",
    "EndRampBegun",
    "Ended",
    "Host",
    "IllegalTransition",
    "RampFinished",
    "SessionState",
    "SessionStates",
    "StartAccepted",
    "StopSent",
    "UnitSilent",
]
