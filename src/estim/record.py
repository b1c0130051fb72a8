"""What a session left behind: ``SessionRecord`` (pydantic), built from its events.

The same function builds the record from a live session's events and from the
journal's rows, so what a charting app gets from ``Session.wait()`` and what
``estim show`` prints later can never disagree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from estim.plan import SessionPlan
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
        faults = []
        amplitude = [
            AmplitudePoint(t=0.0, channel=c.channel, ma=c.amplitude_ma, kind="planned")
            for c in plan.channels
        ]
        started = ended = None
        for e in events:
            if e.kind == "fault":
                code = int(e.data["fault"])
                name = Fault(code).name if code in Fault._value2member_map_ else f"UNKNOWN_{code}"
                faults.append(
                    FaultRecord(code=code, name=name, channel=int(e.data.get("channel", 0)), t=e.t)
                )
            elif e.kind in ("amplitude_set", "amplitude_reached"):
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
            plan=SessionPlan.model_validate(json.loads(row["plan"])),
            created_utc=row["created_utc"],
            events=events,
            outcome=row["outcome"],
            stop_reason=row["stop_reason"],
            ended_by=row["ended_by"],
            delivered_ms=row["delivered_ms"],
        )
