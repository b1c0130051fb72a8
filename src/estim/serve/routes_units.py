"""The routes of the service and its rooms (``estim.serve.api``): state, start, an
amplitude change, stop, stop all, clear a fault, the presets. Nothing about current
is decided here: every start and change goes to the room's device and its limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request

from estim import __version__
from estim.errors import (
    EstimError,
)
from estim.plan import SessionPlan
from estim.serve.calls import Calls, Service, _utc_now, by
from estim.serve.guard import (
    NO_LOGIN,
)
from estim.serve.models import (
    API,
    ERRORS,
    AmplitudeChange,
    Done,
    PresetView,
    RoomId,
    RoomState,
    ServiceInfo,
    Started,
    StopAll,
)
from estim.serve.rooms import Room


def add_unit_routes(
    app: FastAPI, service: Service, calls: Calls
) -> Callable[[Request], Awaitable[ServiceInfo]]:
    """Add the routes; returns ``service_info`` (the login answers with it)."""
    who, room_of, journaled = calls.who, calls.room_of, calls.journaled

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

    return service_info
