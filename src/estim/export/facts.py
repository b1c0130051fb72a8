"""Facts several export formats derive from a record, computed once here so the
CSV, the FHIR bundle, the HTML report and ``estim show`` can never disagree.

Whether output went on (``output_went_on``) is read from every report of the unit,
not from its output-on event alone: a link that lost OUTPUT_STARTED loses its time,
not the fact. Nothing says "never" unless the record shows the unit never started;
with no evidence either way (a start accepted, then silence) it is unknown.

Output time is the unit's own: it starts when the unit reported output on and
lasts the unit's delivered time (``delivered_s``, from its own clock), not the
host's idea of when it stopped.

Amplitude "reached" is what the unit reported (its ramp done, each level reached,
its end ramp, output off), and between its reports the linear slew the protocol
specifies (PROTOCOL.md 7). Where the operator changed the amplitude and the unit
did not report the level that followed, the line is the slew from when the host
sent the change: an estimate, and ``peak`` says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from estim.record import EventRecord, SessionRecord, refused_sets
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
    off = first(record, *OFF_EVENTS)  # the unit's word; the host's end would be a guess
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


@dataclass
class _Slew:
    """One channel in the protocol's output model (PROTOCOL.md 7): its level moves
    from ``level`` at ``t`` toward ``setpoint`` at ``k`` mA/s; the output is the
    lower of the level and the end ramp, ``k x (dwell - t)``. ``exact``: the level
    since ``t`` follows from the unit's reports alone (no change it did not report)."""

    k: float
    dwell: float
    t: float
    level: float
    setpoint: float
    exact: bool

    def level_at(self, t: float) -> float:
        dt = t - self.t
        if dt <= 0:
            return self.level
        step = self.k * dt
        if self.setpoint >= self.level:
            return min(self.setpoint, self.level + step)
        return max(self.setpoint, self.level - step)

    def end_ramp(self, t: float) -> float:
        if t >= self.dwell:
            return 0.0
        return math.inf if math.isinf(self.k) else self.k * (self.dwell - t)

    def out(self, t: float) -> float:
        return max(0.0, min(self.level_at(t), self.end_ramp(t)))

    def corners(self, start: float, end: float) -> list[float]:
        """Where the output line bends strictly between ``start`` and ``end``: the
        level reaching its setpoint, the end ramp catching it, the dwell's end."""
        times = [self.dwell]
        if not math.isinf(self.k) and self.k > 0:
            reach = self.t + abs(self.setpoint - self.level) / self.k
            times += [reach, self.dwell - self.setpoint / self.k]
            if self.setpoint > self.level:  # rising line meets the falling end ramp
                times.append((self.dwell + self.t) / 2 - self.level / (2 * self.k))
        start = max(start, self.t)  # (nothing bends before the line began)
        return sorted(t for t in set(times) if start < t < end)

    def moved(self, t: float, level: float, setpoint: float, exact: bool) -> _Slew:
        return _Slew(self.k, self.dwell, t, level, setpoint, exact)


@dataclass(frozen=True)
class _Point:
    t: float
    ma: float
    known: bool  # reported by the unit, or fixed by the slew between its reports


def _reached(record: SessionRecord, channel: int) -> list[_Point]:
    on = first(record, "output_started")
    if on is None:
        return []
    plan = record.plan
    target = next(c.amplitude_ma for c in plan.channels if c.channel == channel)
    k = target / plan.ramp if plan.ramp > 0 else math.inf
    slew = _Slew(k, plan.dwell, 0.0, 0.0, target, True)
    points = [_Point(0.0, 0.0, True)]
    void = refused_sets(record.events)
    latest = target  # the setpoint last sent

    def advance(t: float) -> None:
        for corner in slew.corners(points[-1].t, t):
            points.append(_Point(corner, slew.out(corner), slew.exact))

    def at(t: float, known: bool) -> None:
        advance(t)
        points.append(_Point(t, slew.out(t), known))

    for e in record.events[record.events.index(on) + 1 :]:
        if e.output_s is None:  # the unit restarted: its time line ended before this
            if e.kind == "unit_restarted":
                t = points[-1].t
                points += [_Point(t, slew.out(t), slew.exact), _Point(t, 0.0, True)]
            break
        t, mine = e.output_s, e.data.get("channel") == channel
        if e.kind == "amplitude_set" and mine and e.n not in void:
            at(t, False)  # host time: when the change was sent, not when the unit took it
            latest = float(e.data["ma"])
            slew = slew.moved(t, slew.level_at(t), latest, False)
        elif e.kind == "amplitude_reached" and mine:
            advance(t)
            ma = float(e.data["ma"])
            slew = slew.moved(t, ma, latest, latest == ma)
            points.append(_Point(t, slew.out(t), True))
        elif e.kind == "ramp_done":
            if slew.exact:  # every channel at its setpoint
                advance(t)
                slew = slew.moved(t, slew.setpoint, slew.setpoint, True)
            at(t, slew.exact)
        elif e.kind == "ramp_down":
            advance(t)
            if len(plan.channels) == 1 and not math.isinf(k):
                # the end ramp reached this channel's level now: k x the time left; from
                # here the output is the end ramp, whatever the setpoint
                level = k * (e.data.get("remaining_ms") or 0) / 1000
                slew = slew.moved(t, level, slew.setpoint, True)
            points.append(_Point(t, slew.out(t), slew.exact))
        elif e.kind == "unit_completed":
            advance(t)
            points.append(_Point(t, 0.0, True))
            break
        elif e.kind in ("unit_stopped", "fault") and e.unit_ms is not None:
            at(t, slew.exact)
            points.append(_Point(t, 0.0, True))
            break
        elif e.kind in ("ended", "interrupted"):
            if record.delivered_s is not None:  # output off by the unit's own clock
                off = max(record.delivered_s, points[-1].t)
                at(off, slew.exact)
                points.append(_Point(off, 0.0, True))
            break
    out = [points[0]]
    for p in points[1:]:
        if (p.t, p.ma) != (out[-1].t, out[-1].ma):
            out.append(p)
        elif p.known and not out[-1].known:
            out[-1] = p
    return out


def reached_trace(record: SessionRecord, channel: int) -> Trace:
    """What the unit reported doing on ``channel``: output on at zero, the ramp done, each
    level reached, the ramp down, output off. Between reports the line is the linear
    slew the protocol specifies. Empty if the unit's output-on was not received."""
    return [(p.t, p.ma) for p in _reached(record, channel)]


@dataclass(frozen=True)
class Peak:
    """The highest amplitude on a channel. ``ma``: exact if ``exact``, else an estimate
    from the unit's slew (None: not even that). ``reported``: the highest level the
    unit reported (or its slew fixes between its reports): a floor when not exact."""

    ma: float | None
    exact: bool
    reported: float | None


def peak(record: SessionRecord, channel: int) -> Peak:
    points = _reached(record, channel)
    if points:
        highest = max(p.ma for p in points)
        known = max(p.ma for p in points if p.known)
        return Peak(_ma(highest), known >= highest - 1e-6, _ma(known) if known > 1e-9 else None)
    # no time line (the unit's output-on was not received): the levels it reported
    plan = record.plan
    target = next(c.amplitude_ma for c in plan.channels if c.channel == channel)
    void = refused_sets(record.events)
    setpoints = [target]
    reported: list[float] = []
    for e in record.events:
        mine = e.data.get("channel") == channel
        if e.kind == "amplitude_set" and mine and e.n not in void:
            setpoints.append(float(e.data["ma"]))
        elif e.kind == "amplitude_reached" and mine:
            reported.append(float(e.data["ma"]))
        elif e.kind == "ramp_done" and len(setpoints) == 1:
            reported.append(target)
        elif e.kind == "ramp_down" and len(plan.channels) == 1 and plan.ramp > 0:
            reported.append(target / plan.ramp * (e.data.get("remaining_ms") or 0) / 1000)
    best = max(reported, default=0.0)
    if best <= 1e-9:
        return Peak(None, False, None)
    # the level never exceeds the highest setpoint: reaching it is the peak
    exact = best >= max(setpoints) - 1e-6
    return Peak(_ma(best) if exact else None, exact, _ma(best))


def _ma(value: float) -> float:
    return round(value, 3)


def highest_reached(record: SessionRecord, channel: int) -> float | None:
    """The highest amplitude the unit reported on ``channel`` (mA): None if output
    never went on, no level was reported, or the peak is only an estimate."""
    p = peak(record, channel)
    return p.ma if p.exact and p.ma else None


def peak_words(p: Peak) -> str:
    """The peak for people: "13.2 mA"; an estimate says so; "-" if nothing is known."""
    if p.exact and p.ma:
        return f"{p.ma:g} mA"
    reported = f"; the unit reported {p.reported:g} mA" if p.reported else ""
    if p.ma:
        return (
            f"about {p.ma:g} mA, an estimate from the unit's slew after a change it did "
            f"not report reaching{reported}"
        )
    if p.reported:
        return f"at least {p.reported:g} mA, reported; a later change was not reported reached"
    return "-"


def fault_names(record: SessionRecord) -> list[str]:
    return [f.name + (f" (channel {f.channel})" if f.channel else "") for f in record.faults]
