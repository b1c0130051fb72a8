"""The session state machine: one table, and nothing else.

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

``fire(event)`` moves along the table and raises ``IllegalTransition`` for any
pair the table does not list: a session can never be in two states, leave an end
state, or skip from STARTING to RUNNING.
"""

from __future__ import annotations

from enum import Enum

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

S = SessionState
_ENDINGS = {
    "completed": S.COMPLETED,  # the unit's deadline, or the host's dwell timer
    "stopped": S.STOPPED,
    "aborted": S.ABORTED,
    "fault": S.FAULTED,
    "link_lost": S.LINK_LOST,
}

#: (state, event) -> next state
TRANSITIONS: dict[tuple[SessionState, str], SessionState] = {
    (S.STARTING, "start_accepted"): S.RAMPING,
    (S.STARTING, "start_refused"): S.REFUSED,
    (S.STARTING, "stopped"): S.STOPPED,
    (S.STARTING, "aborted"): S.ABORTED,
    (S.STARTING, "fault"): S.FAULTED,
    (S.STARTING, "link_lost"): S.LINK_LOST,
    (S.RAMPING, "ramp_done"): S.RUNNING,
    (S.RAMPING, "ramp_down"): S.RAMPING_DOWN,
    (S.RUNNING, "ramp_down"): S.RAMPING_DOWN,
    **{(state, event): end for state in LIVE_STATES for event, end in _ENDINGS.items()},
}


class IllegalTransition(EstimError, RuntimeError):
    """A transition the table does not allow: a bug, never a user error."""


class StateMachine:
    def __init__(self, state: SessionState = SessionState.STARTING) -> None:
        self.state = state
        self.history: list[tuple[SessionState, str, SessionState]] = []

    def can(self, event: str) -> bool:
        return (self.state, event) in TRANSITIONS

    def fire(self, event: str) -> SessionState:
        try:
            new = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(
                f"session in state {self.state} cannot take event {event!r}"
            ) from None
        self.history.append((self.state, event, new))
        self.state = new
        return new
