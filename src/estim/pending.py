"""What a session is waiting for the unit to answer: a typed record per request,
kept by its sequence number until the answer (or the request's expiry) comes.
The policy answers each kind with its own handler (``SessionPolicy.on_answer``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigureAsked:
    """CONFIGURE_CHANNEL for ``channel``, the ``attempt``-th request (each resent too)."""

    channel: int
    attempt: int


@dataclass(frozen=True)
class StartAsked:
    """START (never asked again: its attempts must end within the watchdog)."""


@dataclass(frozen=True)
class HeartbeatAsked:
    """A HEARTBEAT, not resent: the next one is due anyway."""


@dataclass(frozen=True)
class StatusAsked:
    """A periodic STATUS poll (for the caller's view, and checked against the plan)."""


@dataclass(frozen=True)
class TruthAsked:
    """A STATUS asked to learn what happened (an event lost, the link in trouble)."""


@dataclass(frozen=True)
class StopAsked:
    """STOP, resent until acknowledged."""


@dataclass(frozen=True)
class AmplitudeAsked:
    """SET_AMPLITUDE of ``ma`` on ``channel``; ``token`` is the caller waiting;
    ``order`` counts the session's changes in the order they were sent."""

    token: object
    channel: int
    ma: float
    order: int = 0


Pending = (
    ConfigureAsked
    | StartAsked
    | HeartbeatAsked
    | StatusAsked
    | TruthAsked
    | StopAsked
    | AmplitudeAsked
)

__all__ = [
    "AmplitudeAsked",
    "ConfigureAsked",
    "HeartbeatAsked",
    "Pending",
    "StartAsked",
    "StatusAsked",
    "StopAsked",
    "TruthAsked",
]
