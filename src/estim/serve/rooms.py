"""A treatment room: one unit, held by its own threaded runner (``estim.connect``),
and the session running on it.

Each room has a thread of its own that connects to the unit, and while the unit is
connected polls its STATUS (about once a second, only while no session runs: a
session polls for itself); a unit that is missing, or whose link is lost, shows as
such and is tried again every ``retry_s``, without ever waiting on another room.
The unit's heartbeats come from its runner's I/O thread, never from this thread or
the web server's loop.

Everything that reaches the unit goes through the library: ``Device.start`` (the
device's limits judge the plan: SAFETY.md ∩ the unit ∩ the clinic ∩ the room),
``Session.set_amplitude`` (judged by the same limits), ``Session.stop``,
``Device.stop``, ``Device.clear_fault``. These calls block (for a few milliseconds,
or a link's timeout), so the web server makes them from worker threads.

``request_stop`` never blocks: stop-all calls it for every room at once, from the
event loop, before it confirms each stop; a stop asked for while a start is under
way is held and passed on the moment the session exists (``estim.signals``'s latch).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from estim.errors import EstimError, LinkError, UnitBusy
from estim.journal import Journal
from estim.limits import ClinicLimits
from estim.plan import SessionPlan
from estim.protocol import Fault, StopReason
from estim.record import EventRecord, refused_sets
from estim.serve.settings import RoomConfig
from estim.session_state import SessionState

log = logging.getLogger("estim.serve")

CONNECTING = "connecting"  # not yet tried, or trying for the first time
CONNECTED = "connected"
MISSING = "missing"  # could not be reached; tried again every retry_s
LOST = "lost"  # was connected, the link failed; tried again every retry_s

#: how long a stop waits for the session's record to be written, after output is off
RECORD_WAIT_S = 2.0

#: what ``Room.request_stop`` returns while a start is under way
STARTING = object()

#: (room id, the session event, or None for a change of the room's state)
Notify = Callable[[str, EventRecord | None], None]


class RoomUnavailable(EstimError):
    """The room's unit is not connected (missing, or its link was lost)."""


class NoSession(EstimError):
    """The room has no live session to change."""


class Room:
    def __init__(
        self,
        config: RoomConfig,
        *,
        journal: Journal,
        notify: Notify,
        connect: Callable[..., Any] | None = None,
        retry_s: float = 2.0,
        poll_s: float = 1.0,
    ) -> None:
        if connect is None:
            from estim.device import connect as library_connect

            connect = library_connect
        self.config = config
        self.id = config.id
        self.journal = journal
        self._notify = notify
        self._connect: Callable[..., Any] = connect
        self.retry_s = retry_s
        self.poll_s = poll_s
        self._lock = threading.Lock()  # the fields below; never held while a unit is asked
        self._device: Any = None
        self._info: Any = None  # the unit's UnitInfo, from its last connection
        self._session: Any = None
        self._starting = False
        self._pending_stop: str | None = None
        self._ended: dict[str, Any] | None = None  # the last session's end, once known
        self.link = CONNECTING
        self.link_error: str | None = None
        self._status: Any = None  # the unit's last STATUS while idle
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"estim-room {self.id}")

    # -- the room's thread: connect, watch, reconnect -------------------------------------

    def open(self) -> None:
        self._thread.start()

    def close(self, detail: str = "the clinic service was stopped") -> None:
        """Stop the room's session (if any, recording ``detail``), close the unit,
        end the thread."""
        self._closing.set()
        session = self._session
        if session is not None and not session.state.is_end:
            try:
                session.stop(StopReason.HOST_SHUTDOWN, detail)
            except EstimError:
                pass  # the link is gone: the unit's watchdog is the backstop
        self._thread.join(timeout=10.0)
        with self._lock:
            device, self._device = self._device, None
        if device is not None:
            device.close()  # stops a live session and records why

    def _changed(self) -> None:
        self._notify(self.id, None)

    def _run(self) -> None:
        while not self._closing.is_set():
            device = self._device
            if device is None:
                wait = self._try_connect()
            elif device.lost is not None:
                self._lost(device)
                wait = self.retry_s
            else:
                self._poll(device)
                wait = self.poll_s
            self._closing.wait(wait)

    def _try_connect(self) -> float:
        try:
            device = self._connect(self.config.port, clinic=self.config.limits)
        except EstimError as err:
            with self._lock:
                changed = self.link_error != str(err) or self.link == CONNECTING
                if self.link != LOST:
                    self.link = MISSING
                self.link_error = str(err)
            if changed:
                log.warning("room %s: %s", self.id, err)
                self._changed()
            return self.retry_s
        except Exception as err:  # a bug or an odd port: shown, and tried again
            log.exception("room %s: connecting to %s", self.id, self.config.port)
            with self._lock:
                self.link = MISSING if self.link != LOST else LOST
                self.link_error = f"{type(err).__name__}: {err}"
            self._changed()
            return self.retry_s
        with self._lock:
            if self._closing.is_set():
                closing = True
            else:
                closing = False
                self._device = device
                self._info = device.info
                self.link, self.link_error, self._status = CONNECTED, None, None
        if closing:
            device.close()
            return 0.0
        log.info("room %s: connected to %s on %s", self.id, device.info.model, device.url)
        self._changed()
        return 0.0  # poll at once

    def _lost(self, device: Any) -> None:
        with self._lock:
            if self._device is device:
                self._device = None
            self.link, self.link_error = LOST, str(device.lost)
        log.warning("room %s: %s", self.id, device.lost)
        try:
            device.close()
        except Exception:  # closing a port that failed: nothing left to stop
            log.debug("room %s: closing a lost device", self.id, exc_info=True)
        self._changed()

    def _poll(self, device: Any) -> None:
        session = self._session
        if session is not None and not session.state.is_end:
            status = session.last_status  # the session polls the unit itself
        else:
            try:
                status = device.status()
            except LinkError:
                return  # device.lost says whether the link is gone; the next turn sees it
            except EstimError as err:
                log.warning("room %s: status: %s", self.id, err)
                return
        before = self._status
        self._status = status
        if before is None or status is None or _shown(before) != _shown(status):
            self._changed()

    # -- what the API asks (from worker threads; these block on the unit) ----------------

    def device(self) -> Any:
        device = self._device
        if device is None or device.lost is not None:
            raise RoomUnavailable(
                f"room {self.id}: the unit on {self.config.port} is not connected"
                f" ({self.link_error or self.link}); check its cable and power, estim tries "
                f"again every {self.retry_s:g} s"
            )
        return device

    def start(self, plan: SessionPlan) -> Any:
        """Start ``plan``; returns the session once the unit accepted START. Raises
        ``UnitBusy`` while another start is under way in the room (a stop held for
        that one stays held), what ``Device.start`` raises (``PlanError`` before anything is sent,
        ``UnitBusy``, ``DeviceError``, ``LinkError``, ``JournalError``) or
        ``RoomUnavailable``."""
        device = self.device()
        with self._lock:
            if self._starting:  # one start at a time: a stop held for it must not be lost
                raise UnitBusy(f"room {self.id}: a session is starting; wait for it, or stop it")
            self._starting = True
        session = None
        try:
            session = device.start(plan, journal=self.journal, on_event=self._on_event)
        finally:
            with self._lock:
                self._starting = False
                pending, self._pending_stop = self._pending_stop, None
                if session is not None:
                    self._session = session
                    self._ended = None
        if pending is not None and session is not None:
            session.request_stop(StopReason.OPERATOR, pending)
        self._changed()
        return session

    def _on_event(self, event: EventRecord) -> None:
        """On the session's callback thread. Never raises: an exception here would
        stop the session (as it should for a charting app's own callback)."""
        try:
            if event.kind == "ended":
                self._remember_end()
            self._notify(self.id, event)
        except Exception:
            log.exception("room %s: passing on event %s", self.id, event.kind)

    def _remember_end(self) -> None:
        session = self._session
        if session is None:
            return
        record = session.record()
        with self._lock:
            self._ended = {
                "outcome": record.outcome,
                "stop_reason": record.stop_reason,
                "delivered_s": record.delivered_s,
            }

    def set_amplitude(self, channel: int, ma: float) -> None:
        """Judged by the device's limits before anything is sent (``OutputLimitError``)."""
        session = self._session
        if session is None or session.state.is_end:
            raise NoSession(f"room {self.id} has no session running; start one first")
        session.set_amplitude(channel, ma)

    def request_stop(self, detail: str) -> Any:
        """Ask for a stop without blocking. Returns the session asked to stop, ``STARTING``
        if a start is under way (it is stopped the moment it exists), or None."""
        with self._lock:
            if self._starting:
                self._pending_stop = detail
                return STARTING
            session = self._session
        if session is not None and not session.state.is_end:
            session.request_stop(StopReason.OPERATOR, detail)
            return session
        return None

    def stop(self, detail: str, asked: Any = None) -> str:
        """Output off now: the session's STOP (returns once the unit acknowledged it),
        or the unit's if no session runs (a stop always reaches the unit). ``asked`` is
        what ``request_stop`` returned, if it was called first. Returns what was done,
        in words."""
        if asked is None:
            asked = self.request_stop(detail)
        if asked is STARTING:
            return "a session was starting: it is stopped the moment the unit accepts it"
        if asked is not None:
            asked.stop(StopReason.OPERATOR, detail)  # at once if it has already ended
            try:
                asked.wait(timeout=RECORD_WAIT_S)  # so its record says how it ended
            except TimeoutError:
                return f"session {asked.id} stopped (its record is still being written)"
            return f"session {asked.id} stopped"
        state = self.device().stop(StopReason.OPERATOR)
        return f"no session was running; the unit was told to stop and is {state.name}"

    def clear_fault(self) -> str:
        state = self.device().clear_fault()
        self._status = None
        self._changed()
        return f"the unit is {state.name}"

    @property
    def session(self) -> Any:
        return self._session

    # -- what the console and the API show ----------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The room as it stands, JSON-ready (``estim.serve.api.RoomState``)."""
        with self._lock:
            device, session, status = self._device, self._session, self._status
            link, error, ended, starting = (
                self.link,
                self.link_error,
                self._ended,
                self._starting,
            )
        info = self._info  # the unit last connected: still shown while its link is lost
        if session is not None and not session.state.is_end:
            status = session.last_status or status
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.config.name,
            "port": self.config.port,
            "link": link,
            "link_error": error,
            "starting": starting,
            "unit": None if info is None else info.as_dict(),
            "limits": _limits(self.config, info),
            "unit_state": None if status is None else status.state.name,
            "faults": [] if status is None else sorted(_fault_name(f) for f in status.faults),
            "session": None if session is None else _session(session, status, device, ended),
        }
        return out


def _shown(status: Any) -> tuple[Any, ...]:
    """What of an idle unit's STATUS the console shows (a change is pushed)."""
    return (status.state, status.faults, tuple(c.impedance_ohm for c in status.channels))


def _fault_name(code: int) -> str:
    return Fault(code).name if code in Fault._value2member_map_ else f"UNKNOWN_{code}"


def _limits(config: RoomConfig, info: Any) -> dict[str, Any]:
    """The limits that hold in the room: the clinic's narrowed by the room's (from the
    config), the unit's own once it is connected, and SAFETY.md's envelope."""
    from estim.safety import DWELL_MAX_S, DWELL_MIN_S, RMS_MAX_MA

    clinic = {
        f.name: getattr(config.limits, f.name)
        for f in fields(ClinicLimits)
        if getattr(config.limits, f.name) is not None
    }
    unit = None
    if info is not None:
        unit = {
            "amplitude_max_ma": info.amplitude_max_ma,
            "amplitude_step_ma": info.amplitude_step_ma,
            "frequency_min_hz": info.frequency_min_hz,
            "frequency_max_hz": info.frequency_max_hz,
            "pulse_width_min_us": info.pulse_width_min_us,
            "pulse_width_max_us": info.pulse_width_max_us,
            "dwell_min_s": info.dwell_min_s,
            "dwell_max_s": info.dwell_max_s,
            "channels": info.channels,
        }
    return {
        "clinic": clinic,
        "unit": unit,
        "envelope": {
            "dwell_min_s": DWELL_MIN_S,
            "dwell_max_s": DWELL_MAX_S,
            "rms_max_ma": RMS_MAX_MA,
        },
    }


def _session(
    session: Any, status: Any, device: Any, ended: dict[str, Any] | None
) -> dict[str, Any]:
    state: SessionState = session.state
    plan = session.plan
    live = not state.is_end
    reported = {c.channel: c for c in status.channels} if (live and status is not None) else {}
    events = session.events
    refused = refused_sets(events)  # the unit refused these: they were never its setting
    asked = {
        e.data["channel"]: e.data["ma"]
        for e in events
        if e.kind == "amplitude_set" and e.n not in refused
    }
    channels = []
    for ch in plan.channels:
        seen = reported.get(ch.channel)
        try:
            top = device.limits.amplitude_max_ma(ch) if device is not None else None
        except Exception:  # a unit that reported odd limits: no top shown
            top = None
        channels.append(
            {
                "channel": ch.channel,
                "planned_ma": ch.amplitude_ma,
                "set_ma": asked.get(ch.channel, ch.amplitude_ma),
                "frequency_hz": ch.frequency_hz,
                "pulse_width_us": ch.pulse_width_us,
                "amplitude_ma": None if seen is None else seen.amplitude_ma,
                "setpoint_ma": None if seen is None else seen.setpoint_ma,
                "impedance_ohm": None if seen is None else seen.impedance_ohm,
                "max_ma": top,
                "step_ma": None if device is None else device.info.amplitude_step_ma,
            }
        )
    ended = ended or {}
    return {
        "id": session.id,
        "state": str(state),
        "live": live,
        "dwell_s": plan.dwell,
        "ramp_s": plan.ramp,
        "remaining_s": round(session.remaining, 3) if live else 0.0,
        "elapsed_s": round(session.elapsed, 3),
        "patient_ref": plan.patient_ref,
        "clinician": plan.clinician,
        "channels": channels,
        "outcome": ended.get("outcome"),
        "stop_reason": ended.get("stop_reason"),
        "delivered_s": ended.get("delivered_s"),
    }
