"""What every route of the HTTP API does alike (``estim.serve.api``): who asks, which
room, a journal read on the reading threads, a call to a unit on a worker thread
(its refusal kept with the room), and journaling an action with who asked, from
where, and what came of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from estim.config import Preset
from estim.errors import (
    EstimError,
)
from estim.journal import Journal
from estim.serve.actions import ActionLog, Who
from estim.serve.feed import Feed
from estim.serve.guard import (
    NO_LOGIN,
    Logins,
)
from estim.serve.problems import Refused
from estim.serve.rooms import Room
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


class Calls:
    """The routes' shared helpers, over one service."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def who(self, request: Request) -> Who:
        found = request.scope.get("state", {}).get("who")
        return found if isinstance(found, Who) else Who(NO_LOGIN, "unknown")

    def room_of(self, room_id: str) -> Room:
        room = self.service.rooms.get(room_id)
        if room is None:
            known = ", ".join(self.service.rooms) or "none"
            raise StarletteHTTPException(404, f"no room {room_id!r}; rooms: {known}")
        return room

    async def reading(self, act: Callable[[], Any]) -> Any:
        """A read of the journal, on the service's few reading threads."""
        return await asyncio.get_running_loop().run_in_executor(self.service.read_pool, act)

    async def on_unit(self, room: Room, act: Callable[[], Any], pool: Any = None) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool or self.service.unit_pool, act)
        except EstimError as err:
            raise Refused(err, room.id) from None

    async def journaled(
        self,
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
        asker = self.who(request)
        room_id = room.id if room else None
        loop = asyncio.get_running_loop()
        try:
            if room is not None:
                result = await self.on_unit(room, act, pool)
            else:
                result = await loop.run_in_executor(pool or self.service.unit_pool, act)
        except Refused as refused:
            why = f"refused: {refused.err}"
            self.service.log(asker, action, room=room_id, detail=detail, result=why)
            raise
        sid = session_id(result) if session_id else None
        self.service.log(
            asker, action, room=room_id, session_id=sid, detail=detail, result=_words(result)
        )
        return result


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
