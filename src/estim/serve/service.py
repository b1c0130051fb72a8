"""Starting and ending the clinic service: the journal, the rooms, the event feed, the
FHIR sender and the web server, in that order, and back.

Opening the journal is what records the sessions a killed service left unfinished
(``Journal.interrupted``): each is marked ``interrupted`` with its last known state,
queued for the clinic's FHIR server, and named in the action log's ``service_started``
entry. Each room then connects on its own thread. uvicorn runs the web app on its
asyncio loop (in the main thread for ``estim serve``, which takes SIGINT and SIGTERM
from it); when it ends, every live session is stopped and recorded, every unit closed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from estim.config import FhirSettings, Preset
from estim.journal import Journal
from estim.record import EventRecord
from estim.serve.actions import ActionLog, Who
from estim.serve.api import build_app
from estim.serve.feed import Feed
from estim.serve.guard import Guard, Logins, RateLimit
from estim.serve.rooms import Room
from estim.serve.settings import ServeSettings

log = logging.getLogger("estim.serve")

SERVICE = Who("the clinic service", "this machine")
#: ``sys.setswitchinterval`` in ``estim serve`` (see ``serve_forever``)
SWITCH_INTERVAL_S = 0.001


class Service:
    """Everything ``estim serve`` runs, minus the web server's loop."""

    def __init__(
        self,
        settings: ServeSettings,
        *,
        journal_path: str | Path | None = None,
        presets: dict[str, Preset] | None = None,
        fhir: FhirSettings | None = None,
        connect: Callable[..., Any] | None = None,
        retry_s: float = 2.0,
        poll_s: float = 1.0,
        reads: RateLimit | None = None,
        changes: RateLimit | None = None,
    ) -> None:
        from estim.config import BUILTIN_PRESETS

        self.settings = settings
        self.presets = presets or dict(BUILTIN_PRESETS)
        self.journal = Journal(journal_path)  # marks what a killed service left: interrupted
        self.interrupted = list(self.journal.interrupted)
        #: (room id, session id) of each session ``close`` stopped
        self.stopped_at_close: list[tuple[str, str]] = []
        self.actions = ActionLog(self.journal.path)
        self.feed = Feed(self.journal.path, {r.port: r.id for r in settings.rooms}, self.snapshot)
        self.sender = None
        if fhir is not None:
            from estim.sender import BackgroundSender

            self.sender = BackgroundSender(self.journal.path, fhir)
        self.rooms: dict[str, Room] = {
            r.id: Room(
                r,
                journal=self.journal,
                notify=self._notify,
                connect=connect,
                retry_s=retry_s,
                poll_s=poll_s,
            )
            for r in settings.rooms
        }
        self.unit_pool = ThreadPoolExecutor(4, thread_name_prefix="estim-api")
        #: reads of the journal (records, exports, the action log): few threads, so a
        #: flood of them leaves the interpreter lock to the units' I/O threads
        self.read_pool = ThreadPoolExecutor(2, thread_name_prefix="estim-read")
        #: stops only: a stop never queues behind a start or a record being read
        self.stop_pool = ThreadPoolExecutor(len(self.rooms) + 2, thread_name_prefix="estim-stop")
        self.logins = Logins()
        self.app = Guard(build_app(self), settings, self.logins, reads=reads, changes=changes)
        self._opened = False

    def _notify(self, room: str, event: EventRecord | None) -> None:
        self.feed.notify(room, event)
        if event is not None and event.kind == "ended" and self.sender is not None:
            self.sender.wake()

    def snapshot(self) -> list[dict[str, Any]]:
        return [room.snapshot() for room in self.rooms.values()]

    def log(self, who: Who, action: str, **kw: Any) -> None:
        """Journal an action (never blocks: ``ActionLog`` writes it on its own thread)."""
        self.actions.record(who, action, **kw)

    def open(self) -> Service:
        self._opened = True
        detail: dict[str, Any] = {
            "rooms": {r.id: r.port for r in self.settings.rooms},
            "bind": f"{self.settings.host}:{self.settings.port}",
        }
        if self.interrupted:
            detail["interrupted"] = self.interrupted
            log.warning(
                "sessions left unfinished by a service that stopped unexpectedly, recorded as "
                "interrupted: %s",
                ", ".join(self.interrupted),
            )
        self.log(SERVICE, "service_started", detail=detail)
        for room in self.rooms.values():
            room.open()
        if self.sender is not None:
            self.sender.start()
        return self

    def close(self, detail: str = "the clinic service was stopped") -> None:
        """Stop every live session (recording ``detail``), close every unit. The
        sessions it stopped are in ``stopped_at_close`` (room id, session id)."""
        self.stopped_at_close = [
            (room.id, session.id)
            for room in self.rooms.values()
            if (session := room.session) is not None and not session.state.is_end
        ]
        threads = [
            threading.Thread(target=room.close, args=(detail,), name=f"estim-close {room.id}")
            for room in self.rooms.values()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self._opened:
            self.log(SERVICE, "service_stopped", detail={"reason": detail})
        if self.sender is not None:
            self.sender.stop(timeout=5.0)
        self.unit_pool.shutdown(wait=True)
        self.stop_pool.shutdown(wait=True)
        self.read_pool.shutdown(wait=True)
        self.feed.close()
        self.actions.close()
        self.journal.close()


def uvicorn_server(service: Service, sock: socket.socket | None = None) -> Any:
    import uvicorn

    config = uvicorn.Config(
        service.app,
        host=service.settings.host,
        port=service.settings.port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
        server_header=False,
    )
    return uvicorn.Server(config)


def serve_forever(service: Service) -> None:
    """Run until SIGINT, SIGTERM or SIGHUP, then stop every session (recording which
    signal ended the service) and close every unit.

    uvicorn catches SIGINT and SIGTERM itself and, once it has shut down, raises the
    signal again to the handler that was there before it: ours, which only notes it,
    so that the sessions are stopped and recorded here rather than the process dying
    with them running (their units' watchdogs would stop output, and the records say
    ``interrupted``)."""
    server = uvicorn_server(service)
    received: list[int] = []

    def note(signum: int, frame: Any) -> None:
        received.append(signum)
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, note)
    # A thread waiting for the interpreter lock asks for it after this long: a unit's
    # I/O thread due to send a heartbeat waits at most about this for the web
    # server's loop (Python's default is 5 ms).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    service.open()
    server.config.load()  # the web server's own modules and the app, before the freeze
    freeze_heap()
    try:
        server.run()
    finally:
        why = f" ({signal.Signals(received[0]).name})" if received else ""
        service.close(f"the clinic service was stopped{why}")


def freeze_heap() -> None:
    """Keep the cyclic garbage collector's passes short and rare in ``estim serve``:
    a pass holds the interpreter lock, so no unit's I/O thread can send a heartbeat
    while one runs.

    - ``gc.freeze``: what start-up built (modules, the app, the rooms) lives as long
      as the process, so a full pass that walks it frees nothing; frozen, a full pass
      walks only what was made since.
    - a young generation of 10,000 objects rather than 700: the web server makes and
      drops many small objects per request; fewer, larger young passes, and so far
      fewer full ones.

    Measured with ``bench/serve_load.py`` (3 units, 200 event streams and 16 flooding
    clients for 50 s; the collector's pauses in the service, both phases): as it was,
    124 full passes of 20-57 ms and a worst heartbeat gap of 156 ms; frozen, 126 full
    passes of at most 27 ms and 128 ms; frozen with the larger young generation, 6
    full passes of at most 24 ms (2.6 s in all passes against 9.6 s) and 119 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


@contextlib.contextmanager
def running(service: Service) -> Iterator[str]:
    """The service on a thread (tests, benches): yields its base URL. The socket is
    bound first, at the port the settings name (0: any free one)."""
    import dataclasses

    # IPPROTO_TCP named: asyncio sets TCP_NODELAY on accepted sockets only then (a
    # response in two writes would otherwise wait 40 ms for a delayed ACK)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((service.settings.host, service.settings.port))
    port = sock.getsockname()[1]
    if port != service.settings.port:
        service.settings = dataclasses.replace(service.settings, port=port)
        assert isinstance(service.app, Guard)
        service.app.settings = service.settings
    server = uvicorn_server(service)
    server.config.port = port
    service.open()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="estim-uvicorn")
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the web server did not start")
            threading.Event().wait(0.01)
        yield f"http://{service.settings.host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        service.close()
