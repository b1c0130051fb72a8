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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from estim import __version__
from estim.errors import (
    EstimError,
)
from estim.serve.calls import Calls, Service
from estim.serve.guard import (
    MAX_BODY,
    client_gone,
)
from estim.serve.models import API
from estim.serve.problems import _TITLES, Refused, problem_response, status_of, validation_detail
from estim.serve.routes_login import add_login_and_console
from estim.serve.routes_records import add_record_routes
from estim.serve.routes_units import add_unit_routes


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
    calls = Calls(service)

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
            service.log(calls.who(request), action, room=room_id, result=f"refused: {text}")
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

    service_info = add_unit_routes(app, service, calls)
    add_record_routes(app, service, calls)
    add_login_and_console(app, service, calls, service_info)
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
