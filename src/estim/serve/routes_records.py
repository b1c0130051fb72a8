"""The routes of records (``estim.serve.api``): sessions, one record, its exports, the
action log, and the live event stream (SSE; a client that reconnects with
``Last-Event-ID`` misses nothing the journal holds).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from estim.export import FORMATS
from estim.record import SessionRecord
from estim.serve.calls import Calls, Service
from estim.serve.models import API, ERRORS, MEDIA, ActionView, ExportFormat, SessionId


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


def add_record_routes(app: FastAPI, service: Service, calls: Calls) -> None:
    _who, _room_of, reading, _on_unit, _journaled = (
        calls.who,
        calls.room_of,
        calls.reading,
        calls.on_unit,
        calls.journaled,
    )

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
