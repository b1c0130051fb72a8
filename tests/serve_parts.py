"""A clinic service for the tests: rooms on simulated units served in this process
(``estim.sim.serve``), the real web server (uvicorn) on a free loopback port, an HTTP
client, and an event-stream reader that waits for events instead of sleeping."""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from estim.clock import REAL_CLOCK
from estim.limits import ClinicLimits
from estim.protocol import MessageType
from estim.serve.guard import RateLimit
from estim.serve.service import Service, running
from estim.serve.settings import RoomConfig, ServeSettings, narrow
from estim.sim import SimulatedUnit, parse_options, serve

#: a plan the demo units take: channel 1 at 2 Hz, 250 us
PLAN: dict[str, Any] = {
    "dwell": "2m",
    "ramp": "2s",
    "channels": [{"channel": 1, "frequency_hz": 2, "pulse_width_us": 250, "amplitude_ma": 5}],
}
#: what reaches a unit's output (as opposed to heartbeats and status polls)
ACTING = frozenset(
    {
        MessageType.CONFIGURE_CHANNEL,
        MessageType.START,
        MessageType.SET_AMPLITUDE,
        MessageType.STOP,
        MessageType.CLEAR_FAULT,
    }
)


def plan(**changes: Any) -> dict[str, Any]:
    """``PLAN`` with top-level changes, and ``ch_*`` changes to its channel."""
    out = json.loads(json.dumps(PLAN))
    for key, value in changes.items():
        if key.startswith("ch_"):
            out["channels"][0][key[3:]] = value
        else:
            out[key] = value
    return out


def acting(unit: SimulatedUnit) -> dict[str, int]:
    """The requests a unit has seen that act on its output."""
    return {t.name: n for t, n in unit.requests_seen.items() if t in ACTING}


@dataclass
class Clinic:
    base: str
    service: Service
    units: dict[str, SimulatedUnit]
    http: httpx.Client
    streams: list[EventStream] = field(default_factory=list)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(f"{self.base}/api/v1{path}", **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        if body is not None:
            kw["json"] = body
        return self.http.post(f"{self.base}/api/v1{path}", **kw)

    def room(self, room_id: str) -> dict[str, Any]:
        answer = self.get(f"/rooms/{room_id}")
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()
        return data

    def events(self, last_id: int | None = None, **headers: str) -> EventStream:
        stream = EventStream(self.base, last_id, headers)
        self.streams.append(stream)
        return stream

    def wait_rooms(
        self, predicate: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 15.0
    ) -> dict[str, dict[str, Any]]:
        """The first ``rooms`` event whose rooms satisfy ``predicate``."""
        with self.events() as stream:
            return stream.wait_rooms(predicate, timeout)

    def connected(self, timeout: float = 15.0) -> None:
        self.wait_rooms(
            lambda rooms: all(r["link"] == "connected" for r in rooms.values()), timeout
        )


class EventStream:
    """An open ``/api/v1/events`` stream read on a thread of its own: ``next`` waits
    for the next event (name, id, data) as it arrives."""

    def __init__(self, base: str, last_id: int | None, headers: dict[str, str]) -> None:
        self.items: queue.Queue[tuple[str, str | None, Any] | None] = queue.Queue()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self._opened = threading.Event()
        headers = {k.replace("_", "-"): v for k, v in headers.items()}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        where = urlsplit(base)
        self._conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
        self._conn.request("GET", "/api/v1/events", headers=headers)
        self._thread = threading.Thread(target=self._read, name="test-sse")
        self._thread.start()
        self._opened.wait(10)

    def _read(self) -> None:
        try:
            response = self._conn.getresponse()
            self.status = response.status
            self.headers = {k.lower(): v for k, v in response.getheaders()}
            assert self._conn.sock is not None
            self._conn.sock.settimeout(None)  # an event stream is quiet for long
            self._opened.set()
            name, event_id, data = "message", None, []
            while True:
                raw = response.fp.readline()
                if not raw:
                    break
                line = raw.decode().rstrip("\r\n")
                if line == "":
                    if data:
                        self.items.put((name, event_id, json.loads("\n".join(data))))
                    name, event_id, data = "message", None, []
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
        except (OSError, ValueError, http.client.HTTPException):
            pass  # closed under it
        finally:
            self._opened.set()
            self.items.put(None)

    def next(self, timeout: float = 10.0) -> tuple[str, str | None, Any]:
        item = self.items.get(timeout=timeout)
        if item is None:
            raise EOFError("the event stream ended")
        return item

    def wait(
        self, predicate: Callable[[str, str | None, Any], bool], timeout: float = 15.0
    ) -> tuple[str, str | None, Any]:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout} s")
            item = self.next(left)
            if predicate(*item):
                return item

    def wait_rooms(
        self, predicate: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 15.0
    ) -> dict[str, dict[str, Any]]:
        _, _, data = self.wait(
            lambda name, _id, data: name == "rooms" and predicate({r["id"]: r for r in data}),
            timeout,
        )
        return {r["id"]: r for r in data}

    def close(self) -> None:
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        self._conn.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def clinic(
    tmp_path: Path,
    rooms: dict[str, str] | None = None,
    *,
    clinic_limits: ClinicLimits | None = None,
    room_limits: dict[str, ClinicLimits] | None = None,
    extra_rooms: tuple[RoomConfig, ...] = (),
    clinicians: dict[str, str] | None = None,
    journal: Path | None = None,
    **service_options: Any,
) -> Iterator[Clinic]:
    """A running service. ``rooms`` maps a room id to its simulated unit's options
    (``sim://`` query syntax); ``extra_rooms`` are rooms on ports of their own."""
    rooms = rooms if rooms is not None else {"room-1": "", "room-2": "", "room-3": ""}
    clinic_limits = clinic_limits or ClinicLimits()
    service_options.setdefault("retry_s", 0.2)
    service_options.setdefault("poll_s", 0.2)
    service_options.setdefault("reads", RateLimit(per_s=1000, burst=2000))
    service_options.setdefault("changes", RateLimit(per_s=1000, burst=2000))
    with contextlib.ExitStack() as stack:
        units: dict[str, SimulatedUnit] = {}
        configs = []
        for room_id, options in rooms.items():
            unit = parse_options(options).build_unit(REAL_CLOCK)
            url = stack.enter_context(serve(unit))
            units[room_id] = unit
            limits = narrow(
                clinic_limits, (room_limits or {}).get(room_id, ClinicLimits()), room_id
            )
            configs.append(RoomConfig(room_id, room_id.replace("-", " ").title(), url, limits))
        settings = ServeSettings(
            rooms=(*configs, *extra_rooms), port=0, clinicians=dict(clinicians or {})
        )
        service = Service(
            settings, journal_path=journal or tmp_path / "estim.db", **service_options
        )
        base = stack.enter_context(running(service))
        http = stack.enter_context(httpx.Client(timeout=10.0))
        found = Clinic(base, service, units, http)
        try:
            yield found
        finally:
            for stream in found.streams:
                stream.close()
