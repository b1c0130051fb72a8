"""Shared pieces of the reliability suite (tests/test_reliability_*.py).

Scale: the environment variable ``ESTIM_RELIABILITY`` sizes every reliability test.

- unset or empty: CI size (the whole suite adds about a minute);
- ``full``: the long run (hundreds of sessions, 100+ kill -9 runs, minutes of fuzzing);
- a number: a multiplier of the CI size (``ESTIM_RELIABILITY=5`` runs five times as many cases).

``ESTIM_RELIABILITY_SEED`` (an integer) changes the seed of every seeded random
choice, for exploring beyond the fixed CI seeds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from estim.plan import ChannelPlan, SessionPlan

_RAW = os.environ.get("ESTIM_RELIABILITY", "").strip().lower()

#: ESTIM_RELIABILITY=full
FULL = _RAW == "full"


def _multiplier() -> float:
    if not _RAW or FULL:
        return 1.0
    try:
        value = float(_RAW)
    except ValueError:
        raise ValueError(
            f"ESTIM_RELIABILITY={_RAW!r}: expected 'full' or a number (a multiplier of the CI size)"
        ) from None
    if not value > 0:
        raise ValueError(f"ESTIM_RELIABILITY={_RAW!r} must be positive")
    return value


MULTIPLIER = _multiplier()

#: the base seed of every seeded choice in the suite
SEED = int(os.environ.get("ESTIM_RELIABILITY_SEED", "20240607"))


def scaled(ci: int, full: int) -> int:
    """``ci`` cases in CI, ``full`` in full mode, ``ci * multiplier`` otherwise."""
    if FULL:
        return full
    return max(1, round(ci * MULTIPLIER))


# --- the unit's own account of its output ---------------------------------------------


@dataclass(frozen=True)
class OutputPeriod:
    """One period of output, from the unit's log: START accepted to output off."""

    session_id: int
    on_t: float
    dwell_ms: int
    off_t: float | None = None
    reason: str | None = None
    delivered_ms: int | None = None
    max_frame_gap_ms: float | None = None

    @property
    def journal_id(self) -> str:
        return f"{self.session_id:08x}"

    @property
    def deadline(self) -> float:
        return self.on_t + self.dwell_ms / 1000


def as_dicts(log: list[Any]) -> list[dict[str, Any]]:
    """The unit's log as JSON dicts: from ``SimulatedUnit.log`` or ``--json`` lines."""
    return [e if isinstance(e, dict) else {"t": e.t, "kind": e.kind, **e.data} for e in log]


def output_periods(log: list[Any]) -> list[OutputPeriod]:
    """Every period of output in a unit's log, in order; the last may be open."""
    periods: list[OutputPeriod] = []
    open_: dict[str, Any] | None = None
    for e in as_dicts(log):
        if e["kind"] == "output_on":
            assert open_ is None, f"output_on {e} while {open_} was still on"
            open_ = e
        elif e["kind"] == "output_off":
            assert open_ is not None, f"output_off {e} without output_on"
            assert e["session_id"] == open_["session_id"], (open_, e)
            periods.append(
                OutputPeriod(
                    session_id=open_["session_id"],
                    on_t=open_["t"],
                    dwell_ms=open_["dwell_ms"],
                    off_t=e["t"],
                    reason=e["reason"],
                    delivered_ms=e["delivered_ms"],
                    max_frame_gap_ms=e["max_frame_gap_ms"],
                )
            )
            open_ = None
    if open_ is not None:
        periods.append(
            OutputPeriod(
                session_id=open_["session_id"], on_t=open_["t"], dwell_ms=open_["dwell_ms"]
            )
        )
    return periods


# --- plans --------------------------------------------------------------------------------


def make_plan(
    dwell: float,
    channels: dict[int, float],
    *,
    ramp: float = 5.0,
    watchdog: float = 0.5,
    **context: Any,
) -> SessionPlan:
    """A plan at 2 Hz, 250 us; ``channels`` maps channel number to mA."""
    return SessionPlan(
        dwell=dwell,
        ramp=ramp,
        watchdog=watchdog,
        channels=[
            ChannelPlan(channel=ch, frequency_hz=2, pulse_width_us=250, amplitude_ma=ma)
            for ch, ma in sorted(channels.items())
        ],
        **context,
    )
