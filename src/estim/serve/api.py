"""The HTTP API (``/api/v1``), the event stream and the console's files: a FastAPI app.

FastAPI, because its request and response types are pydantic models: the plan a
client sends is ``estim.SessionPlan`` itself (so a refused plan is refused with the
library's own words, before anything is sent), a record is ``SessionRecord``, and
the OpenAPI document (``schemas/openapi.json``) is generated from those models and
never written by hand.

Handlers decide nothing about current. A start goes to ``Room.start`` (the device's
limits judge it), an amplitude to ``Session.set_amplitude`` (the same limits), a stop
to the session or the unit. Calls that reach a unit run on worker threads (a pool for
stops of its own, so a stop never queues behind anything); reads of the rooms come
from memory on the loop. Every action is journaled with who asked and from where,
refusals included. Errors are ``application/problem+json`` (RFC 9457) carrying the
one-line words the CLI prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from estim import __version__
from estim.config import Preset
from estim.errors import (
    DeviceError,
    DeviceFault,
    EstimError,
    JournalError,
    LinkError,
    OptionError,
    PlanError,
    SessionNotFound,
    UnitBusy,
)
from estim.export import FORMATS
from estim.info import UnitInfo
from estim.journal import Journal
from estim.plan import SessionPlan
from estim.protocol import ErrorCode
from estim.record import SessionRecord
from estim.serve.actions import ActionLog, Who
from estim.serve.feed import Feed
from estim.serve.guard import (
    COOKIE,
    COOKIE_MAX_AGE_S,
    MAX_BODY,
    NO_LOGIN,
    Logins,
    client_gone,
)
from estim.serve.rooms import NoSession, Room, RoomUnavailable
from estim.serve.settings import ServeSettings


class Service(Protocol):
    """What the app uses of ``estim.serve.service.Service`` (which builds the app: a
    Protocol keeps the imports one-way)."""

    settings: ServeSettings
    rooms: dict[str, Room]
    feed: Feed
    journal: Journal
    actions: ActionLog
    logins: Logins
    presets: dict[str, Preset]
    unit_pool: ThreadPoolExecutor
    stop_pool: ThreadPoolExecutor
    read_pool: ThreadPoolExecutor

    def log(self, who: Who, action: str, **kw: Any) -> None: ...


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


# -- errors ------------------------------------------------------------------------------


def status_of(err: BaseException) -> int:
    if isinstance(err, SessionNotFound):
        return 404
    if isinstance(err, UnitBusy | NoSession | RoomUnavailable | DeviceFault):
        return 409
    if isinstance(err, DeviceError):
        return 409 if err.code == ErrorCode.FAULT_LATCHED else 422
    if isinstance(err, PlanError | OptionError):
        return 422
    if isinstance(err, LinkError | JournalError):
        return 503
    if isinstance(err, RuntimeError):  # IllegalTransition: a bug, never a user's error
        return 500
    return 409  # the library refused for the state things are in (a session that ended)


def problem_response(
    status: int, detail: str, *, title: str = "", room: str | None = None
) -> JSONResponse:
    body = Problem(
        title=title or _TITLES.get(status, "Error"),
        status=status,
        detail=" ".join(detail.split()),
        room=room,
    ).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


_TITLES = {
    400: "Bad request",
    401: "Login required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with the room's state",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Refused",
    429: "Too many requests",
    503: "Unit or journal unavailable",
    500: "Internal error",
}


class Refused(Exception):
    """An ``EstimError`` raised for a room, carried to the problem handler."""

    def __init__(self, err: EstimError, room: str | None) -> None:
        self.err = err
        self.room = room


def validation_detail(exc: RequestValidationError) -> tuple[int, str]:
    """The first problem, in the library's words where it has some."""
    first = exc.errors()[0] if exc.errors() else {}
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, EstimError):
        return 422, str(cause)
    kind = first.get("type", "")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc)
    if kind == "json_invalid":
        return 400, f"the body is not valid JSON: {first.get('msg', '')}".strip()
    if kind == "missing":
        text = f"{where} is missing" if where else "the body is missing"
    elif kind == "extra_forbidden":
        text = f"unknown field {where!r}"
    else:
        text = f"{where}: {first.get('msg', 'is not valid')}" if where else str(first.get("msg"))
    return 422, text.removeprefix("Value error, ")


# -- the app -----------------------------------------------------------------------------


@asynccontextmanager
async def _lifespan(service: Service) -> AsyncIterator[None]:
    """The event feed runs on the web server's loop for as long as the app."""
    task = asyncio.create_task(service.feed.run(), name="estim-feed")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def stream_from(
    request: Request,
    last_event_id: Annotated[
        str | None,
        Header(max_length=20, description="resume after this event id (the last one received)"),
    ] = None,
) -> int | None:
    """The event stream's start, checked before it begins (a refusal is still a 4xx)."""
    feed = request.app.state.service.feed
    if feed.full():
        raise StarletteHTTPException(429, "too many event streams are open; try again later")
    if last_event_id is None:
        return None
    if not last_event_id.strip().isdigit():
        raise StarletteHTTPException(
            400, f"Last-Event-ID {last_event_id!r} is not an event id of this service"
        )
    return int(last_event_id)


def build_app(service: Service) -> FastAPI:
    app = FastAPI(
        lifespan=lambda _app: _lifespan(service),
        title="estim clinic service",
        version=__version__,
        summary="Every treatment room's stimulator in one API: start, change, stop, records.",
        description=(
            "Every start and amplitude change is judged by the room's limits (SAFETY.md's "
            "envelope, the unit's, the clinic's and the room's) before anything is sent. "
            "Errors are application/problem+json (RFC 9457). With clinicians' tokens "
            "configured, send Authorization: Bearer TOKEN."
        ),
        openapi_url=f"{API}/openapi.json",
        docs_url=None,
        redoc_url=None,
        max_body_size=MAX_BODY,  # (a body without a Content-Length is counted here)
    )

    app.state.service = service

    def who(request: Request) -> Who:
        found = request.scope.get("state", {}).get("who")
        return found if isinstance(found, Who) else Who(NO_LOGIN, "unknown")

    def room_of(room_id: str) -> Room:
        room = service.rooms.get(room_id)
        if room is None:
            known = ", ".join(service.rooms) or "none"
            raise StarletteHTTPException(404, f"no room {room_id!r}; rooms: {known}")
        return room

    async def reading(act: Callable[[], Any]) -> Any:
        """A read of the journal, on the service's few reading threads."""
        return await asyncio.get_running_loop().run_in_executor(service.read_pool, act)

    async def on_unit(room: Room, act: Callable[[], Any], pool: Any = None) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool or service.unit_pool, act)
        except EstimError as err:
            raise Refused(err, room.id) from None

    async def journaled(
        request: Request,
        action: str,
        room: Room | None,
        act: Callable[[], Any],
        *,
        detail: dict[str, Any] | None = None,
        session_id: Callable[[Any], str | None] | None = None,
        pool: Any = None,
    ) -> Any:
        """Do ``act`` on a worker thread, and journal it with who asked and what came of it."""
        asker = who(request)
        room_id = room.id if room else None
        loop = asyncio.get_running_loop()
        try:
            if room is not None:
                result = await on_unit(room, act, pool)
            else:
                result = await loop.run_in_executor(pool or service.unit_pool, act)
        except Refused as refused:
            why = f"refused: {refused.err}"
            service.log(asker, action, room=room_id, detail=detail, result=why)
            raise
        sid = session_id(result) if session_id else None
        service.log(
            asker, action, room=room_id, session_id=sid, detail=detail, result=_words(result)
        )
        return result

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return problem_response(status_of(exc.err), str(exc.err), room=exc.room)

    @app.exception_handler(EstimError)
    async def _estim(request: Request, exc: EstimError) -> JSONResponse:
        return problem_response(status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, text = validation_detail(exc)
        action, room_id = action_of(request.method, request.url.path)
        if action is not None:  # a refused request is an action too: journaled
            service.log(who(request), action, room=room_id, result=f"refused: {text}")
        return problem_response(status, text)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "")
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"nothing at {request.url.path}; the API is under {API}"
        response = problem_response(exc.status_code, detail)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        import logging

        if client_gone(exc):  # an event stream's client left: nobody to answer
            return problem_response(400, "the client closed the connection")
        logging.getLogger("estim.serve").exception("internal error on %s", request.url.path)
        return problem_response(
            500,
            f"internal error in estim: {exc!r}; please report it (the journal keeps every session's record)",
        )

    # -- the service and its rooms ---------------------------------------------------

    @app.get(f"{API}", response_model=ServiceInfo, tags=["service"])
    async def service_info(request: Request) -> ServiceInfo:
        asker = who(request)
        return ServiceInfo(
            service="estim",
            version=__version__,
            rooms=list(service.rooms),
            login_required=bool(service.settings.clinicians),
            clinician=None if asker.clinician == NO_LOGIN else asker.clinician,
            simulated=any(
                (r.snapshot()["unit"] or {}).get("simulated") for r in service.rooms.values()
            ),
        )

    @app.get(f"{API}/rooms", response_model=list[RoomState], tags=["rooms"])
    async def rooms() -> list[dict[str, Any]]:
        """Every room with its live state: link, unit and limits, session, countdown,
        each channel's amplitude and impedance."""
        return [room.snapshot() for room in service.rooms.values()]

    @app.get(f"{API}/rooms/{{room_id}}", response_model=RoomState, tags=["rooms"], responses=ERRORS)
    async def room(room_id: RoomId) -> dict[str, Any]:
        return room_of(room_id).snapshot()

    @app.post(
        f"{API}/rooms/{{room_id}}/sessions",
        response_model=Started,
        status_code=201,
        tags=["sessions"],
        responses=ERRORS,
    )
    async def start(request: Request, room_id: RoomId, plan: SessionPlan) -> dict[str, Any]:
        """Start a session from a plan. The room's limits judge it before anything is
        sent; 422 with the reason if they refuse it, 409 if the unit is busy."""
        target = room_of(room_id)
        asker = who(request)
        if not plan.clinician and asker.clinician != NO_LOGIN:
            plan = plan.model_copy(update={"clinician": asker.clinician})
        session = await journaled(
            request,
            "start",
            target,
            lambda: target.start(plan),
            detail={"plan": plan.model_dump(mode="json")},
            session_id=lambda s: s.id,
        )
        service.feed.notify(target.id, None)
        return {"session_id": session.id, "room": target.snapshot()}

    @app.post(
        f"{API}/rooms/{{room_id}}/amplitude",
        response_model=RoomState,
        tags=["sessions"],
        responses=ERRORS,
    )
    async def amplitude(
        request: Request, room_id: RoomId, change: AmplitudeChange
    ) -> dict[str, Any]:
        """Change one channel's amplitude in the room's live session: judged by the same
        limits as the plan; the unit slews to it."""
        target = room_of(room_id)
        session = target.session
        await journaled(
            request,
            "amplitude",
            target,
            lambda: target.set_amplitude(change.channel, change.amplitude_ma),
            detail=change.model_dump(),
            session_id=lambda _: session.id if session is not None else None,
        )
        return target.snapshot()

    @app.post(
        f"{API}/rooms/{{room_id}}/stop", response_model=Done, tags=["sessions"], responses=ERRORS
    )
    async def stop(request: Request, room_id: RoomId) -> Done:
        """Output off now in this room: its session's STOP, or the unit's if none runs."""
        target = room_of(room_id)
        asker = who(request)
        detail = f"stopped from the clinic service{by(asker)}"
        asked = target.request_stop(detail)  # never blocks: the STOP is on its way
        result = await journaled(
            request, "stop", target, lambda: target.stop(detail, asked), pool=service.stop_pool
        )
        return Done(room=target.id, result=result)

    @app.post(f"{API}/stop-all", response_model=StopAll, tags=["sessions"], responses=ERRORS)
    async def stop_all(request: Request) -> StopAll:
        """Output off in every room at once. Each live session is asked to stop before
        this handler waits for any answer; then every stop is confirmed in parallel."""
        asker = who(request)
        detail = f"stop all, from the clinic service{by(asker)}"
        requested = _utc_now()
        # never blocks: every unit's STOP is on its way before any answer is awaited
        asked = {room_id: t.request_stop(detail) for room_id, t in service.rooms.items()}
        loop = asyncio.get_running_loop()

        def one(target: Room) -> str:
            try:
                return target.stop(detail, asked[target.id])
            except EstimError as err:
                return f"not stopped from here: {err}"

        results = await asyncio.gather(
            *(loop.run_in_executor(service.stop_pool, one, t) for t in service.rooms.values())
        )
        done = [Done(room=t, result=r) for t, r in zip(service.rooms, results, strict=True)]
        service.log(asker, "stop_all", detail={"rooms": {d.room: d.result for d in done}})
        return StopAll(rooms=done, requested_utc=requested)

    @app.post(
        f"{API}/rooms/{{room_id}}/clear-fault",
        response_model=Done,
        tags=["rooms"],
        responses=ERRORS,
    )
    async def clear_fault(request: Request, room_id: RoomId) -> Done:
        """Clear a fault latched on the room's unit (check the electrodes first)."""
        target = room_of(room_id)
        result = await journaled(request, "clear_fault", target, target.clear_fault)
        return Done(room=target.id, result=result)

    @app.get(f"{API}/presets", response_model=list[PresetView], tags=["service"])
    async def presets() -> list[dict[str, Any]]:
        """The built-in presets and the clinic's own (frequency, pulse width, waveform, mode)."""
        return [dict(p.__dict__) for p in service.presets.values()]

    # -- records ------------------------------------------------------------------------

    @app.get(
        f"{API}/sessions", response_model=list[SessionRecord], tags=["records"], responses=ERRORS
    )
    async def sessions(
        since: Annotated[
            str | None, Query(max_length=40, description="ISO 8601 date or time")
        ] = None,
        until: Annotated[str | None, Query(max_length=40)] = None,
        patient: Annotated[str | None, Query(max_length=200)] = None,
        clinician: Annotated[str | None, Query(max_length=200)] = None,
        unit: Annotated[str | None, Query(max_length=200, description="the unit's serial")] = None,
        outcome: Annotated[
            Literal[
                "completed",
                "stopped",
                "aborted",
                "faulted",
                "link_lost",
                "refused",
                "interrupted",
                "live",
            ]
            | None,
            Query(),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
    ) -> list[SessionRecord]:
        """Recorded sessions, newest first, matching every filter given."""
        try:
            found: list[SessionRecord] = await reading(
                lambda: service.journal.query(
                    since=since,
                    until=until,
                    patient=patient,
                    clinician=clinician,
                    unit=unit,
                    outcome=outcome,
                    limit=limit,
                )
            )
        except ValueError as err:
            raise StarletteHTTPException(422, str(err)) from None
        return found

    @app.get(
        f"{API}/sessions/{{session_id}}",
        response_model=SessionRecord,
        tags=["records"],
        responses=ERRORS,
    )
    async def session_record(session_id: SessionId) -> SessionRecord:
        found: SessionRecord = await reading(lambda: service.journal.get(session_id))
        return found

    @app.get(
        f"{API}/sessions/{{session_id}}/export/{{fmt}}",
        tags=["records"],
        responses={**ERRORS, 200: {"content": {m: {} for m in dict.fromkeys(MEDIA.values())}}},
        response_class=Response,
    )
    async def export(session_id: SessionId, fmt: ExportFormat) -> Response:
        """One session in an export format (``estim export --format``): the HTML report
        opens in a browser; the others download."""
        record = await reading(lambda: service.journal.get(session_id))
        body = await reading(lambda: FORMATS[fmt].render([record]))
        headers = {
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
        }
        if fmt != "html":
            ext = {
                "jsonl": "jsonl",
                "csv": "csv",
                "events-csv": "events.csv",
                "fhir": "fhir.json",
            }.get(fmt, fmt)
            headers["Content-Disposition"] = f'attachment; filename="{record.id}.{ext}"'
        return Response(body, media_type=MEDIA[fmt], headers=headers)

    @app.get(f"{API}/actions", response_model=list[ActionView], tags=["records"])
    async def actions(
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        session_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{8}$")] = None,
    ) -> list[dict[str, Any]]:
        """The action log, newest first: who asked for what, from where, and what came of it."""
        found = await reading(lambda: service.actions.recent(limit, session_id=session_id))
        return [a.__dict__ for a in found]

    # -- the event stream ------------------------------------------------------------------

    @app.get(
        f"{API}/events",
        response_class=StreamingResponse,
        tags=["events"],
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "an event stream"},
            400: ERRORS[400],
            429: ERRORS[409],
        },
    )
    async def events(after: Annotated[int | None, Depends(stream_from)]) -> StreamingResponse:
        """Server-Sent Events: ``session`` events (every event of every room's sessions,
        as the journal holds it; the id is the journal's, so a reconnect with
        Last-Event-ID misses nothing) and ``rooms`` (every room's state, when it
        changes and every second while a session runs; no id). Each event is encoded
        once by the feed for every stream (``fastapi.sse.format_sse_event``)."""
        return StreamingResponse(
            service.feed.follow(after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- logging in (with clinicians' tokens configured) -------------------------------------

    @app.post(f"{API}/login", response_model=ServiceInfo, tags=["service"], responses=ERRORS)
    async def login(request: Request, body: Login) -> JSONResponse:
        """Trade a clinician's token for a session cookie (HttpOnly, SameSite=Strict)."""
        name = service.settings.clinician_for(body.token)
        asker = who(request)
        if name is None:
            service.log(Who("unknown", asker.origin), "login", result="refused: unknown token")
            raise StarletteHTTPException(
                401, "that token is not one of this clinic's; ask for a new one"
            )
        service.log(Who(name, asker.origin), "login")
        info = await service_info(request)
        response = JSONResponse(info.model_copy(update={"clinician": name}).model_dump())
        response.set_cookie(
            COOKIE,
            service.logins.new(name),
            max_age=COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            path="/",
        )
        return response

    @app.post(f"{API}/logout", status_code=204, tags=["service"])
    async def logout(request: Request) -> Response:
        sid = request.cookies.get(COOKIE)
        if sid:
            service.logins.end(sid)
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- the console ------------------------------------------------------------------------

    files = resources.files("estim.serve") / "console"
    pages = {
        "/": ("index.html", "text/html; charset=utf-8"),
        "/console.css": ("console.css", "text/css; charset=utf-8"),
        "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    }
    for path, (name, media) in pages.items():
        body = (files / name).read_bytes()

        async def page(body: bytes = body, media: str = media) -> Response:
            return Response(
                body,
                media_type=media,
                headers={
                    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                    "X-Frame-Options": "DENY",
                    "Cache-Control": "no-cache",
                },
            )

        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)

    async def no_icon() -> Response:
        return Response(status_code=204)

    app.add_api_route("/favicon.ico", no_icon, methods=["GET"], include_in_schema=False)
    return app


ACTIONS = {
    "sessions": "start",
    "amplitude": "amplitude",
    "stop": "stop",
    "clear-fault": "clear_fault",
}


def action_of(method: str, path: str) -> tuple[str | None, str | None]:
    """The action a changing request asks for, and its room (for the action log)."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return None, None
    parts = path.removeprefix(API).strip("/").split("/")
    if parts == ["stop-all"]:
        return "stop_all", None
    if len(parts) == 3 and parts[0] == "rooms" and parts[2] in ACTIONS:
        return ACTIONS[parts[2]], parts[1][:40]
    return None, None


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the API (``schemas/openapi.json``), without a service."""
    document: dict[str, Any] = build_app(None).openapi()  # type: ignore[arg-type]
    return document


def by(asker: Who) -> str:
    """`` by NAME`` for a stop reason, or nothing for a service without logins."""
    return "" if asker.clinician == NO_LOGIN else f" by {asker.clinician}"


def _words(result: Any) -> str:
    if isinstance(result, str):
        return result
    if result is None:
        return "ok"
    sid = getattr(result, "id", None)
    return f"session {sid}" if sid else "ok"


def _utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def monotonic() -> float:
    return time.monotonic()
