"""The HTTP API's own types and names (``estim.serve.api``); the library's models
(``SessionPlan``, ``SessionRecord``) are used as they are.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from estim.info import UnitInfo

PROBLEM = "application/problem+json"
API = "/api/v1"
RoomId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$", description="a room's id")]
SessionId = Annotated[
    str, Path(pattern=r"^[0-9a-fA-F]{1,8}$", description="a session id or a unique prefix of it")
]
ExportFormat = Literal["json", "jsonl", "csv", "events-csv", "fhir", "html"]
MEDIA = {
    "json": "application/json",
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "events-csv": "text/csv; charset=utf-8",
    "fhir": "application/fhir+json",
    "html": "text/html; charset=utf-8",
}


# -- the API's own types (the library's models are used as they are) ----------------------


class Problem(BaseModel):
    """An error (RFC 9457); ``detail`` is the one line the CLI would print."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    room: str | None = None


class ChannelView(BaseModel):
    channel: int
    planned_ma: float
    set_ma: float = Field(description="the last amplitude asked for (the plan's, or a change)")
    frequency_hz: float
    pulse_width_us: int
    amplitude_ma: float | None = Field(description="what the unit reports delivering now")
    setpoint_ma: float | None = Field(description="what the unit is slewing to")
    impedance_ohm: int | None = Field(description="the electrode's, None when not measured")
    max_ma: float | None = Field(description="the highest amplitude the limits allow here")
    step_ma: float | None


class SessionView(BaseModel):
    id: str
    state: str
    live: bool
    dwell_s: float
    ramp_s: float
    remaining_s: float
    elapsed_s: float
    patient_ref: str | None
    clinician: str | None
    channels: list[ChannelView]
    outcome: str | None
    stop_reason: str | None
    delivered_s: float | None


class RoomLimits(BaseModel):
    clinic: dict[str, float] = Field(description="the clinic's limits, narrowed by the room's")
    unit: dict[str, float] | None = Field(description="the unit's own (DEVICE_INFO)")
    envelope: dict[str, float] = Field(description="SAFETY.md's, whatever the unit says")


class RoomState(BaseModel):
    id: str
    name: str
    port: str
    link: Literal["connecting", "connected", "missing", "lost"]
    link_error: str | None
    starting: bool
    unit: UnitInfo | None
    limits: RoomLimits
    unit_state: str | None = Field(description="the unit's state from its last STATUS")
    faults: list[str]
    session: SessionView | None = Field(description="the live session, or the last one")


class AmplitudeChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    channel: int = Field(ge=1, le=8)
    amplitude_ma: float = Field(allow_inf_nan=False, description="judged by the room's limits")


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    token: str = Field(min_length=1, max_length=200)


class Done(BaseModel):
    room: str
    result: str


class StopAll(BaseModel):
    rooms: list[Done]
    requested_utc: str


class Started(BaseModel):
    session_id: str
    room: RoomState


class PresetView(BaseModel):
    name: str
    description: str
    frequency_hz: float
    pulse_width_us: int
    waveform: str
    mode: str
    alt_frequency_hz: float | None
    switch_s: float | None
    amplitude_ma: float | None


class ActionView(BaseModel):
    id: int
    utc: str
    clinician: str
    origin: str
    room: str | None
    action: str
    session_id: str | None
    detail: dict[str, Any]
    result: str


class ServiceInfo(BaseModel):
    service: str
    version: str
    rooms: list[str]
    login_required: bool
    clinician: str | None
    simulated: bool = Field(description="True if any room's unit is simulated")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM: {}}} for code in (400, 401, 403, 404, 409, 422)
}
