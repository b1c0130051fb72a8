"""The event stream's source: every session event the journal holds, in the order the
journal committed them, and the rooms' state, to every open stream at once.

A session event's stream id is its row id in the journal's ``events`` table. SQLite
hands out row ids inside the write transaction, which one writer holds at a time, so
ids grow in commit order: a client that reconnects with ``Last-Event-ID: N`` is sent
every row after N from the journal, then the live ones, and misses nothing the
journal holds. Only what the journal has made durable is sent, so the stream never
shows an event that a crash could take back.

One reader (a read-only connection of its own, on one worker thread) serves every
stream: it reads new rows when a session's ``on_event`` callback says something
happened (passed into the loop with ``call_soon_threadsafe``; the journal's own
writer may commit a moment later, so it also looks every ``poll_s``), encodes each
event once (``fastapi.sse.format_sse_event``) and puts what one look found, as one
chunk of bytes, on every stream's queue: 200 streams cost 200 queue puts and writes
per look, not an encoding per event per stream. A stream that falls ``queue_size``
chunks behind is closed; its client reconnects with its last id and catches up from
the journal.

The rooms' state goes out as a ``rooms`` event (no id: it is a snapshot, not a
record) when a room changes, and every ``live_every_s`` while a session runs, never
more than once per ``min_gap_s`` (OctoPrint's ``current`` message does the same).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi.sse import format_sse_event

from estim.record import EventRecord

#: a session event: its journal row id and its bytes on the wire (encoded once)
Row = tuple[int, bytes]
#: sent when a stream has been quiet this long (proxies close silent connections)
PING_S = 15.0
PING = format_sse_event(comment="ping")

_SELECT = (
    "SELECT e.rowid, e.session_id, e.n, e.utc, e.t, e.unit_ms, e.kind, e.data, s.port "
    "FROM events e JOIN sessions s ON s.id = e.session_id "
)


class Stream:
    """One open event stream's queue: chunks of encoded events (one per feed step)."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.overflowed = False


class Feed:
    def __init__(
        self,
        journal_path: str | Path,
        port_rooms: dict[str, str],
        snapshot: Callable[[], list[dict[str, Any]]],
        *,
        poll_s: float = 0.25,
        live_every_s: float = 1.0,
        min_gap_s: float = 0.5,
        queue_size: int = 2000,
        max_streams: int = 1000,
    ) -> None:
        self.port_rooms = port_rooms
        self.snapshot = snapshot
        self.poll_s = poll_s
        self.live_every_s = live_every_s
        self.min_gap_s = min_gap_s
        self.queue_size = queue_size
        self.max_streams = max_streams
        self.streams: set[Stream] = set()
        uri = Path(journal_path).resolve().as_uri() + "?mode=ro"
        self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="estim-feed")
        (top,) = self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()
        #: the row id of the last event sent to the streams
        self.position: int = int(top)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._dirty = True
        self._last_rooms = 0.0
        self.rooms: list[dict[str, Any]] = []

    # -- from any thread -----------------------------------------------------------------

    def notify(self, room: str, event: EventRecord | None) -> None:
        """Something happened in ``room`` (a session event, or a change of its state).
        Safe from any thread; never blocks; does nothing once the loop is gone."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._poke)
        except RuntimeError:  # the loop is closed: the service is ending
            pass

    def _poke(self) -> None:
        self._dirty = True
        if self._wake is not None:
            self._wake.set()

    # -- on the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.step()

    async def step(self) -> None:
        """Send what the journal has committed since ``position``, and the rooms if due,
        to every stream as one chunk (each event encoded once, whatever the streams)."""
        loop = asyncio.get_running_loop()
        chunk: list[bytes] = []
        while True:
            rows = await loop.run_in_executor(self._reader, self._rows, self.position, None, 500)
            for rowid, wire in rows:
                self.position = rowid
                chunk.append(wire)
            if len(rows) < 500:
                break
        now = time.monotonic()
        live = any(r.get("session") and r["session"]["live"] for r in self.rooms)
        due = self._dirty or (live and now - self._last_rooms >= self.live_every_s)
        if due and now - self._last_rooms >= self.min_gap_s:
            self._dirty = False
            self._last_rooms = now
            self.rooms = self.snapshot()
            chunk.append(_rooms(self.rooms))
        if chunk:
            self._send(b"".join(chunk))

    def _send(self, chunk: bytes) -> None:
        for stream in list(self.streams):
            try:
                stream.queue.put_nowait(chunk)
            except asyncio.QueueFull:
                stream.overflowed = True
                self.streams.discard(stream)
                while not stream.queue.empty():
                    stream.queue.get_nowait()
                stream.queue.put_nowait(None)

    def full(self) -> bool:
        return len(self.streams) >= self.max_streams

    async def follow(self, last_id: int | None) -> AsyncIterator[bytes]:
        """One stream, on the wire: the rooms now, every journal event after ``last_id``
        (none before this moment if None), then every new one as it is committed; a
        ping when it has been quiet for ``PING_S``. Ends when the stream falls
        ``queue_size`` chunks behind (its client reconnects and catches up)."""
        stream = Stream(self.queue_size)
        self.streams.add(stream)
        upto = self.position  # from here on the stream's queue has every event
        try:
            self.rooms = self.rooms or self.snapshot()
            yield format_sse_event(comment="estim", retry=1000) + _rooms(self.rooms)
            if last_id is not None and last_id < upto:
                loop = asyncio.get_running_loop()
                after = last_id
                while after < upto:
                    rows = await loop.run_in_executor(self._reader, self._rows, after, upto, 500)
                    if not rows:
                        break
                    yield b"".join(wire for _, wire in rows)
                    after = rows[-1][0]
            while True:
                try:
                    got = await asyncio.wait_for(stream.queue.get(), PING_S)
                except asyncio.TimeoutError:
                    yield PING
                    continue
                if got is None:
                    return  # overflowed: the client reconnects with its last id
                yield got
        finally:
            self.streams.discard(stream)

    # -- on the reader thread --------------------------------------------------------------

    def _rows(self, after: int, upto: int | None, limit: int) -> list[Row]:
        sql = _SELECT + "WHERE e.rowid > ?" + (" AND e.rowid <= ?" if upto is not None else "")
        args: tuple[int, ...] = (after, upto) if upto is not None else (after,)
        try:
            rows = self._db.execute(sql + " ORDER BY e.rowid LIMIT ?", (*args, limit)).fetchall()
        except sqlite3.Error:
            return []  # busy or briefly unreadable: the next turn reads it
        return [self._item(row) for row in rows]

    def _item(self, row: tuple[Any, ...]) -> Row:
        rowid, session_id, n, utc, t, unit_ms, kind, data, port = row
        event = EventRecord(n=n, utc=utc, t=t, unit_ms=unit_ms, kind=kind, data=json.loads(data))
        from estim import words

        text = None if kind == "start_requested" else words.event(event)
        body = {
            "id": rowid,
            "room": self.port_rooms.get(port),
            "session_id": session_id,
            **event.model_dump(mode="json", exclude={"output_s"}),
            "text": text,
        }
        return int(rowid), format_sse_event(event="session", id=str(rowid), data_str=_json(body))

    def close(self) -> None:
        self._reader.shutdown(wait=True)
        self._db.close()


def _json(data: Any) -> str:
    """One line of JSON (an SSE ``data:`` line must not hold a newline)."""
    return json.dumps(data, separators=(",", ":"), default=str)


def _rooms(rooms: list[dict[str, Any]]) -> bytes:
    return format_sse_event(event="rooms", data_str=_json(rooms))
