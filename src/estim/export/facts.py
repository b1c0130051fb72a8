"""Facts several export formats derive from a record, computed once here so the
CSV, the FHIR bundle, the HTML report and ``estim show`` can never disagree.

Whether output went on (``output_went_on``) is read from every report of the unit,
not from its output-on event alone: a link that lost OUTPUT_STARTED loses its time,
not the fact. Nothing says "never" unless the record shows the unit never started;
with no evidence either way (a start accepted, then silence) it is unknown.

Output time is the unit's own: it starts when the unit reported output on and
lasts the unit's delivered time (``delivered_s``, from its own clock), not the
host's idea of when it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from estim.record import EventRecord, SessionRecord
from estim.words import parse_utc

#: events after which the unit's output is off
OFF_EVENTS = ("unit_completed", "unit_stopped")
#: unit reports that only come while its output is on
OUTPUT_REPORTS = ("output_started", "ramp_done", "amplitude_reached", "ramp_down", "unit_completed")

WentOn = Literal["yes", "no", "unknown"]


@dataclass(frozen=True)
class OutputPeriod:
    start_utc: str | None  # None: output went on, but the unit's output-on was not received
    end_utc: str | None  # None: output went on, and when it went off is unknown
    start_t: float | None  # host seconds since the start was requested (the record's ``t``)
    end_t: float | None


def first(record: SessionRecord, *kinds: str) -> EventRecord | None:
    return next((e for e in record.events if e.kind in kinds), None)


def output_went_on(record: SessionRecord) -> WentOn:
    """Whether the unit's output went on: "yes" if any report of the unit says so (its
    output-on, a ramp done, a level reached, the end ramp, a completion, a delivered
    time above zero), "no" only if the record shows it never started (refused, or
    ended before the unit accepted START with the link answering), else "unknown"."""
    for e in record.events:
        if e.kind in OUTPUT_REPORTS:
            return "yes"
        if e.kind in ("unit_stopped", "ended") and (e.data.get("delivered_ms") or 0) > 0:
            return "yes"
    if (record.delivered_s or 0) > 0:
        return "yes"
    if record.outcome == "refused":
        return "no"
    if first(record, "start_accepted") or record.outcome in (None, "interrupted", "link_lost"):
        return "unknown"  # START accepted (output starts after its ACK), or maybe sent
    return "no"


def output_period(record: SessionRecord) -> OutputPeriod | None:
    """When the unit's output was on; None unless it went on (``output_went_on``).
    Its start is None if the unit's output-on was not received (never guessed)."""
    if output_went_on(record) != "yes":
        return None
    on = first(record, "output_started")
    if on is None:
        off = first(record, *OFF_EVENTS)
        return OutputPeriod(None, off.utc if off else None, None, off.t if off else None)
    if record.delivered_s is not None:
        end = parse_utc(on.utc) + timedelta(seconds=record.delivered_s)
        return OutputPeriod(on.utc, utc_text(end), on.t, on.t + record.delivered_s)
    off = first(record, *OFF_EVENTS, "ended")
    if off is None:
        return OutputPeriod(on.utc, None, on.t, None)
    return OutputPeriod(on.utc, off.utc, on.t, off.t)


def output_on_words(record: SessionRecord, local: Callable[[str], str]) -> tuple[str, str]:
    """The report's "Output on" and "Output off" in words (``local``: a UTC text as
    people read it)."""
    went, period = output_went_on(record), output_period(record)
    if period is not None:
        on = (
            local(period.start_utc)
            if period.start_utc
            else "yes, time not received (the unit's output-on event was lost; its later "
            "reports show output was on)"
        )
        return on, local(period.end_utc) if period.end_utc else "unknown"
    if went == "unknown":
        if record.outcome is None:
            return "not reported yet", "-"
        return "unknown: the record does not show whether output went on", "unknown"
    return "never: no current was delivered", "-"


def utc_text(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Trace = list[tuple[float, float]]  # (seconds since output on, mA)


def planned_trace(record: SessionRecord, channel: int) -> Trace:
    """What the plan asked of ``channel``: the ramp up, the amplitude (changed where the
    operator set a new one), and the ramp down to zero at the end of the dwell."""
    plan = record.plan
    planned = next(c.amplitude_ma for c in plan.channels if c.channel == channel)
    points: Trace = [(0.0, 0.0), (plan.ramp, planned)]
    level = planned
    for t, ma in amplitude_sets(record, channel):
        if plan.ramp < t < plan.dwell - plan.ramp:
            points += [(t, level), (t, ma)]
            level = ma
    return [*points, (plan.dwell - plan.ramp, level), (plan.dwell, 0.0)]


def amplitude_sets(record: SessionRecord, channel: int) -> Trace:
    """Each amplitude the operator set on ``channel`` while output was on: (seconds
    since output on, mA)."""
    return [
        (e.output_s, float(e.data["ma"]))
        for e in record.events
        if e.kind == "amplitude_set" and e.data.get("channel") == channel and e.output_s is not None
    ]


def reached_trace(record: SessionRecord, channel: int) -> Trace:
    """What the unit reported doing on ``channel``: output on at zero, the ramp done, each
    level reached, the ramp down, output off. Between reports the line is the linear
    slew the protocol specifies. Empty if output never went on."""
    on = first(record, "output_started")
    if on is None:
        return []
    ramp = record.plan.ramp
    target = next(c.amplitude_ma for c in record.plan.channels if c.channel == channel)
    points: Trace = [(0.0, 0.0)]
    phase = "up"  # up (the start ramp), hold, down (the end ramp)
    down_from = (0.0, 0.0, 1.0)  # (t, mA, seconds to zero) when the end ramp began

    def level_at(t: float) -> float:
        if phase == "up":
            return target * min(1.0, t / ramp) if ramp > 0 else target
        if phase == "down":
            t0, ma, span = down_from
            return ma * max(0.0, 1.0 - (t - t0) / span)
        return points[-1][1]

    for e in record.events[record.events.index(on) + 1 :]:
        if e.output_s is None:  # the unit restarted: its time line ended before this
            if e.kind == "unit_restarted":
                t = points[-1][0]
                points += [(t, level_at(t)), (t, 0.0)]
            break
        t = e.output_s  # since output on (record.since_output_on)
        if e.kind == "amplitude_set" and e.data.get("channel") == channel:
            points.append((t, level_at(t)))
            target = float(e.data["ma"])
        elif e.kind == "ramp_done":
            phase = "hold"
            points.append((t, target))
        elif e.kind == "amplitude_reached" and e.data.get("channel") == channel:
            points.append((t, float(e.data["ma"])))
        elif e.kind == "ramp_down":
            level = level_at(t)
            down_from = (t, level, max(1e-3, (e.data.get("remaining_ms") or 0) / 1000))
            phase = "down"
            points.append((t, level))
        elif e.kind == "unit_completed":
            points.append((t, 0.0))
            break
        elif e.kind in ("unit_stopped", "unit_restarted"):
            points += [(t, level_at(t)), (t, 0.0)]
            break
    return points


def highest_reached(record: SessionRecord, channel: int) -> float | None:
    """The highest amplitude the unit reported on ``channel`` (mA); None if output
    never went on or no level was reported."""
    levels = [ma for _, ma in reached_trace(record, channel)]
    return max(levels) if len(levels) > 1 and max(levels) > 0 else None


def fault_names(record: SessionRecord) -> list[str]:
    return [f.name + (f" (channel {f.channel})" if f.channel else "") for f in record.faults]
