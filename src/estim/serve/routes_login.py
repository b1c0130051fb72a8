"""Logging in and out (with clinicians' tokens configured), and the console's files
(``estim.serve.api``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from estim.serve.actions import Who
from estim.serve.calls import Calls, Service
from estim.serve.guard import (
    COOKIE,
    COOKIE_MAX_AGE_S,
)
from estim.serve.models import API, ERRORS, Login, ServiceInfo


def add_login_and_console(
    app: FastAPI,
    service: Service,
    calls: Calls,
    service_info: Callable[[Request], Awaitable[ServiceInfo]],
) -> None:
    who, _room_of, _reading, _on_unit, _journaled = (
        calls.who,
        calls.room_of,
        calls.reading,
        calls.on_unit,
        calls.journaled,
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
