"""Errors as ``application/problem+json`` (RFC 9457), with the one-line words the CLI
prints and the status each kind of refusal gets (``estim.serve.api``).
"""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

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
from estim.protocol import ErrorCode
from estim.serve.models import PROBLEM, Problem
from estim.serve.rooms import NoSession, RoomUnavailable

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
