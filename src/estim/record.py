"""What a session left behind: ``SessionRecord`` (pydantic), built from its events.

The same function builds the record from a live session's events and from the
journal's rows, so what a charting app gets from ``Session.wait()`` and what
``estim show`` prints later can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from estim.plan import SessionPlan, as_recorded
from estim.protocol import Fault


class EventRecord(BaseModel):
    """One thing that happened in a session."""

    model_config = ConfigDict(frozen=True)

    n: int = Field(description="order within the session, from 0")
    utc: str = Field(description="wall-clock time, ISO 8601 UTC")
    t: float = Field(description="host seconds since the start was requested")
    unit_ms: int | None = Field(default=None, description="the unit's own clock, for unit events")
    kind: str
    data: dict[str, Any] = Field(default_factory=dict)
    output_s: float | None = Field(
        default=None,
        description="seconds since the unit's output went on: by the unit's clock for its "
        "events (across its 32-bit wrap), by the host's for the host's; never decreasing; "
        "None before output on, and from a unit restart on (its clock restarted, so the "
        "output time line ended). Derived when the record is built; exports and plots use it",
    )


class UnitRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    serial_number: str
    firmware: str
    simulated: bool
    port: str


class FaultRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: int
    name: str
    channel: int
    t: float


class AmplitudePoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    t: float
    channel: int
    ma: float
    kind: Literal["planned", "set", "reached"]


#: the version of the record's shape (``SessionRecord.schema_version``); raised when
#: a field changes meaning or is removed, not when one is added
RECORD_SCHEMA_VERSION = 1

Outcome = Literal[
    "completed", "stopped", "aborted", "faulted", "link_lost", "refused", "interrupted"
]


#: the unit's clock is milliseconds in 32 bits (PROTOCOL.md 5.2): it wraps after 49.7 days
UNIT_CLOCK_WRAP_MS = 2**32
#: how far a unit event's time since output on may run ahead of the host's time since
#: it heard output go on (that event's way over the link, and the clocks' drift); a
#: unit clock further ahead restarted (it reads across its wrap from near zero)
UNIT_AHEAD_S = 2.0
UNIT_AHEAD_RATE = 0.01


def since_output_on(events: list[EventRecord]) -> list[EventRecord]:
    """``events`` with ``output_s`` set from the unit's output-on on: a unit event by
    the unit's clock (its time then, modulo the wrap), a host event by the host's
    clock from the moment the host heard output go on. Times never decrease: where
    the two clocks interleave within a few milliseconds, a later event is never
    placed earlier. Whatever the unit's clock read at output on (0, 100 s, a second
    before its wrap), the story is the same. A unit that restarted (its
    ``unit_restarted``, or a clock far ahead of the host's: restarted near zero and
    read across its wrap) ended output: that event and every later one get None."""
    on = next((e for e in events if e.kind == "output_started"), None)
    if on is None:
        return [_no_output_s(e) for e in events]
    start = events.index(on)
    out = [_no_output_s(e) for e in events[:start]]
    last = 0.0
    restarted = False
    for e in events[start:]:
        host = e.t - on.t
        if e.unit_ms is not None and on.unit_ms is not None:
            seconds = ((e.unit_ms - on.unit_ms) % UNIT_CLOCK_WRAP_MS) / 1000
            restarted = restarted or seconds > host * (1 + UNIT_AHEAD_RATE) + UNIT_AHEAD_S
        else:
            seconds = host
        restarted = restarted or e.kind == "unit_restarted"
        if restarted:  # the unit's clock restarted: output was off, its time line ended
            out.append(_no_output_s(e))
            continue
        last = max(last, round(seconds, 3))
        out.append(e if e.output_s == last else e.model_copy(update={"output_s": last}))
    return out


def _no_output_s(e: EventRecord) -> EventRecord:
    return e.model_copy(update={"output_s": None}) if e.output_s is not None else e


class SessionRecord(BaseModel):
    """A session's durable record: plan, unit, outcome, and every event."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = Field(
        default=RECORD_SCHEMA_VERSION,
        description="the version of this record's shape (schemas/session-record.schema.json)",
    )
    id: str = Field(description="8 hex digits; the session id sent to the unit")
    unit: UnitRecord
    plan: SessionPlan
    planned_s: float
    delivered_s: float | None = Field(
        description="output-on to output-off by the unit's clock; None if unknown"
    )
    created_utc: str
    started_utc: str | None
    ended_utc: str | None
    outcome: Outcome | None = Field(description="None while the session is live")
    stop_reason: str | None
    ended_by: Literal["unit", "host"] | None = Field(
        description="for a completed session: whose dwell deadline ended it"
    )
    journal_error: str | None = None
    faults: list[FaultRecord]
    amplitude: list[AmplitudePoint]
    events: list[EventRecord]

    @classmethod
    def build(
        cls,
        *,
        session_id: str,
        unit: UnitRecord,
        plan: SessionPlan,
        created_utc: str,
        events: list[EventRecord],
        outcome: str | None,
        stop_reason: str | None,
        ended_by: str | None,
        delivered_ms: int | None,
        journal_error: str | None = None,
    ) -> SessionRecord:
        events = since_output_on(events)
        faults = []
        amplitude = [
            AmplitudePoint(t=0.0, channel=c.channel, ma=c.amplitude_ma, kind="planned")
            for c in plan.channels
        ]
        started = ended = None
        refused = refused_sets(events)  # sets the unit refused: it never took them
        for e in events:
            if e.kind == "fault":
                code = int(e.data["fault"])
                name = Fault(code).name if code in Fault._value2member_map_ else f"UNKNOWN_{code}"
                faults.append(
                    FaultRecord(code=code, name=name, channel=int(e.data.get("channel", 0)), t=e.t)
                )
            elif e.kind in ("amplitude_set", "amplitude_reached") and e.n not in refused:
                kind: Literal["set", "reached"] = "set" if e.kind == "amplitude_set" else "reached"
                amplitude.append(
                    AmplitudePoint(t=e.t, channel=e.data["channel"], ma=e.data["ma"], kind=kind)
                )
            elif e.kind == "output_started" and started is None:
                started = e.utc
            elif e.kind == "ended" or e.kind == "interrupted":
                ended = e.utc
        return cls(
            id=session_id,
            unit=unit,
            plan=plan,
            planned_s=plan.dwell,
            delivered_s=None if delivered_ms is None else delivered_ms / 1000,
            created_utc=created_utc,
            started_utc=started,
            ended_utc=ended,
            outcome=outcome,  # type: ignore[arg-type]
            stop_reason=stop_reason,
            ended_by=ended_by,  # type: ignore[arg-type]
            journal_error=journal_error,
            faults=faults,
            amplitude=amplitude,
            events=events,
        )

    @classmethod
    def from_journal(cls, row: dict[str, Any], event_rows: list[dict[str, Any]]) -> SessionRecord:
        import json

        unit = UnitRecord(
            model=row["unit_model"],
            serial_number=row["unit_serial"],
            firmware=row["unit_firmware"],
            simulated=bool(row["unit_simulated"]),
            port=row["port"],
        )
        with as_recorded():  # an older estim may have taken a number off the wire's grid
            plan = SessionPlan.model_validate(json.loads(row["plan"]))
        events = [
            EventRecord(
                n=e["n"],
                utc=e["utc"],
                t=e["t"],
                unit_ms=e["unit_ms"],
                kind=e["kind"],
                data=e["data"],
            )
            for e in event_rows
        ]
        return cls.build(
            session_id=row["id"],
            unit=unit,
            plan=plan,
            created_utc=row["created_utc"],
            events=events,
            outcome=row["outcome"],
            stop_reason=row["stop_reason"],
            ended_by=row["ended_by"],
            delivered_ms=row["delivered_ms"],
        )


def refused_sets(events: Sequence[EventRecord]) -> set[int]:
    """The event numbers of amplitude_set events the unit refused (an
    amplitude_refused for the same channel and mA after it): the unit never took them.
    One pass (the console asks on every snapshot, and a flood of refusals is long)."""
    void: set[int] = set()
    open_sets: dict[tuple[Any, Any], list[int]] = {}
    for e in events:
        key = (e.data.get("channel"), e.data.get("ma"))
        if e.kind == "amplitude_set":
            open_sets.setdefault(key, []).append(e.n)
        elif e.kind == "amplitude_refused" and open_sets.get(key):
            void.add(open_sets[key].pop())
    return void
