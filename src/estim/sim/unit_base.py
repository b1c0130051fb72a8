"""What every part of the simulated unit shares (``estim.sim.unit``): its state, its
output model over time (PROTOCOL.md section 7: ramps, slews, the dwell deadline,
the watchdog, compliance), state changes, events and its log. The request
handlers (``estim.sim.handlers``) and the fault script (``estim.sim.faults``)
build on it; ``SimulatedUnit`` joins them.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from functools import partial
from typing import Any

from estim.clock import REAL_CLOCK, Clock
from estim.protocol import (
    INTER_BYTE_GAP_S,
    Ack,
    AmplitudeReached,
    BootCause,
    Booted,
    Completed,
    ConfigureChannel,
    Decoder,
    Event,
    Fault,
    FaultRaised,
    Message,
    MessageType,
    Nack,
    RampDone,
    RampDownStarted,
    State,
    Stopped,
    StopReason,
    encode,
)

from .config import UnitConfig
from .model import (
    _US,
    ENDED_SESSIONS,
    LogEntry,
    _ceil_div,
    _Channel,
    _first_true,
    _Session,
)


class UnitBase:
    """A unit's state and its output model over time: what a power cycle resets, the
    session's channels, the timed actions (ramps, slews, the deadline, the watchdog,
    compliance), state changes, events and the log."""

    # what a power cycle resets (set in _boot)
    _boot_us: int
    _decoder: Decoder
    _outbox: bytearray
    _pending: list[Event]
    _event_seq: int
    _replies: OrderedDict[int, tuple[Message, Ack | Nack]]
    _ended: deque[int]
    _ended_floor: int
    _configs: dict[int, ConfigureChannel]
    _state: State
    _session: _Session | None
    _faults: int
    _fault_channel: int
    _last_rx: int | None
    _logged_levels: list[int]

    def __init__(
        self,
        config: UnitConfig | None = None,
        *,
        clock: Clock | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config or UnitConfig()
        self.clock: Clock = clock or REAL_CLOCK
        self.random = random.Random(seed)
        self.log: list[LogEntry] = []
        #: called with every new log entry (``estim simulate --json`` prints them)
        self.listeners: list[Callable[[LogEntry], None]] = []
        #: set by whoever serves the unit: called after a fault injection, so it
        #: polls again and forwards what the unit sent
        self.wakeup: Callable[[], None] | None = None
        self._lock = threading.RLock()
        self._done_until = 0
        #: every valid request received since power-on, by type (resets do not clear it)
        self.requests_seen: Counter[MessageType] = Counter()
        self.impedance_ohm = [self.config.impedance_ohm] * self.config.channels
        #: actions scripted at clock times: (t_us, action, args)
        self._scheduled: list[tuple[int, str, tuple[int, ...]]] = []
        #: actions scripted at offsets into every session: (offset_us, action, args)
        self._per_session: list[tuple[int, str, tuple[int, ...]]] = []
        self._session_actions: list[tuple[int, str, tuple[int, ...]]] = []
        self._boot(BootCause.POWER_ON, self._now())

    @property
    def state(self) -> State:
        return self._state

    @property
    def session_id(self) -> int:
        return self._session.id if self._session else 0

    def _run_action(self, queue: list[tuple[int, str, tuple[int, ...]]], t: int) -> None:
        raise NotImplementedError  # (the fault script: estim.sim.faults)

    def _stop(self, reason: int, now: int) -> None:
        raise NotImplementedError  # (the request handlers: estim.sim.handlers)

    def _now(self) -> int:
        return round(self.clock.now() * _US)

    def _boot(self, cause: BootCause, now: int) -> None:
        self._boot_us = now
        self._done_until = now
        self._decoder = Decoder(gap_s=round(INTER_BYTE_GAP_S * _US))
        self._outbox = bytearray()
        self._pending = []
        self._event_seq = 0
        self._replies = OrderedDict()
        self._ended = deque(maxlen=ENDED_SESSIONS)
        self._ended_floor = 0
        self._configs = {}
        self._state = State.IDLE
        self._session = None
        self._session_actions = []
        self._faults = 0
        self._fault_channel = 0
        self._last_rx = None
        self._logged_levels = [0] * self.config.channels
        self._log(now, "boot", cause=BootCause(cause).name)
        self._emit(Booted, now, cause=int(cause))
        self._flush_events()

    def _timed(self) -> tuple[int, int, Callable[[int], None]] | None:
        """The earliest thing time will do, (t_us, priority, action), at or after
        the instant everything before was done (``_done_until``)."""
        since = self._done_until
        candidates: list[tuple[int, int, Callable[[int], None]]] = []
        if self._scheduled:
            candidates.append(
                (self._scheduled[0][0], 2, partial(self._run_action, self._scheduled))
            )
        s = self._session
        if s is not None:
            candidates.append((s.deadline_us, 0, self._complete))
            if self._last_rx is not None:
                candidates.append((self._last_rx + s.watchdog_us, 1, self._watchdog))
            if self._session_actions:
                candidates.append(
                    (
                        self._session_actions[0][0],
                        2,
                        partial(self._run_action, self._session_actions),
                    )
                )
            if not s.ramping_down:
                owed = [ch.reached_at() for ch in s.channels.values() if ch.report_reached]
                if not s.ramp_done:
                    owed.append(max(ch.reached_at() for ch in s.channels.values()))
                if owed:
                    candidates.append((max(since, min(owed)), 3, self._slews_done))
                t_down = self._ramp_down_start(s, since)
                if t_down is not None:
                    candidates.append((t_down, 4, self._ramp_down))
            t_over = self._compliance_breach(s, since)
            if t_over is not None:
                candidates.append((t_over, 1, self._compliance_fault))
        return min(candidates, key=lambda c: (c[0], c[1])) if candidates else None

    def _advance(self, now: int) -> None:
        """Carry out every timed action due at or before ``now``, in time order,
        each at its own instant."""
        for _ in range(10_000):
            nxt = self._timed()
            if nxt is None or nxt[0] > now:
                self._done_until = max(self._done_until, now)
                return
            t, _, action = nxt
            self._done_until = max(self._done_until, t)
            action(t)
        raise RuntimeError("simulated unit: timed actions did not converge")

    def _ramp_down_start(self, s: _Session, since: int) -> int | None:
        """The first instant the end-ramp envelope reaches some channel's level."""
        key = ("down", s.version)
        if key not in s.cache:
            starts = []
            for ch in s.channels.values():

                def capped(t: int, ch: _Channel = ch) -> bool:
                    # exact: A * (D - t) / R <= level(t), without rounding the envelope
                    return ch.target * (s.deadline_us - t) <= ch.ramp_us * ch.level(t)

                t = _first_true(capped, ch.t0, s.deadline_us)
                if t is not None:
                    starts.append(t)
            s.cache[key] = min(starts, default=None)
        first = s.cache[key]
        return None if first is None else max(first, since)

    def _compliance_limit_ua(self, channel: int) -> int:
        return self.config.compliance_mv * 1000 // max(1, self.impedance_ohm[channel - 1])

    def _compliance_breach(self, s: _Session, since: int) -> int | None:
        """When output x impedance first exceeds the compliance voltage."""
        key = ("compliance", s.version, tuple(self.impedance_ohm))
        if key not in s.cache:
            times = []
            for ch in s.channels.values():
                limit = self._compliance_limit_ua(ch.number)
                if ch.output(ch.t0, s.deadline_us) > limit:
                    times.append(ch.t0)
                elif ch.setpoint > limit and ch.setpoint >= ch.start:

                    def over(t: int, ch: _Channel = ch, limit: int = limit) -> bool:
                        return ch.output(t, s.deadline_us) > limit

                    t = _first_true(over, ch.t0, min(ch.reached_at(), s.deadline_us))
                    if t is not None:
                        times.append(t)
            s.cache[key] = min(times, default=None)
        first = s.cache[key]
        return None if first is None else max(first, since)

    def _slews_done(self, t: int) -> None:
        s = self._session
        assert s is not None
        for ch in sorted(s.channels.values(), key=lambda c: c.number):
            if ch.report_reached and ch.reached_at() <= t:
                ch.report_reached = False
                self._emit(AmplitudeReached, t, channel=ch.number, amplitude_ua=ch.setpoint)
        if not s.ramp_done and all(ch.reached_at() <= t for ch in s.channels.values()):
            s.ramp_done = True
            self._emit(RampDone, t)
            self._set_state(State.RUNNING, t)

    def _ramp_down(self, t: int) -> None:
        s = self._session
        assert s is not None
        s.ramping_down = True
        s.ramp_done = True
        for ch in s.channels.values():
            ch.report_reached = False
        self._emit(RampDownStarted, t, remaining_ms=_ceil_div(s.deadline_us - t, 1000))
        self._set_state(State.RAMPING_DOWN, t)

    def _complete(self, t: int) -> None:
        s = self._session
        assert s is not None
        delivered = (t - s.start_us) // 1000
        self._end_session(t, "completed")
        self._emit(Completed, t, session_id=s.id, delivered_ms=delivered)
        self._set_state(State.IDLE, t)

    def _watchdog(self, t: int) -> None:
        assert self._last_rx is not None
        late_ms = (self._now() - t) / 1000
        self._log(t, "watchdog", last_frame=self._last_rx / _US, late_ms=late_ms)
        self._fault(Fault.WATCHDOG, 0, t)

    def _compliance_fault(self, t: int) -> None:
        s = self._session
        assert s is not None
        for ch in sorted(s.channels.values(), key=lambda c: c.number):
            if ch.output(t, s.deadline_us) > self._compliance_limit_ua(ch.number):
                self._fault(Fault.OVER_CURRENT, ch.number, t)
                return

    def _check_electrodes(self, now: int) -> None:
        s = self._session
        if s is None:
            return
        for number in sorted(s.channels):
            if self.impedance_ohm[number - 1] > self.config.lead_off_ohm:
                self._fault(Fault.LEAD_OFF, number, now)
                return

    def _set_state(self, state: State, t: int) -> None:
        if state != self._state:
            self._log(t, "state", previous=self._state.name, state=state.name)
            self._state = state

    def _end_session(self, t: int, why: str) -> None:
        """Output off now (at ``t``); the session can never resume."""
        s = self._session
        assert s is not None
        self._session = None
        self._session_actions = []
        self._remember_ended(s.id)
        if self._last_rx is not None:
            s.max_gap_us = max(s.max_gap_us, t - max(self._last_rx, s.start_us))
        self._log(
            t,
            "output_off",
            session_id=s.id,
            reason=why,
            delivered_ms=(t - s.start_us) // 1000,
            max_frame_gap_ms=s.max_gap_us / 1000,
        )
        self._log_levels(t)

    def _remember_ended(self, session_id: int) -> None:
        """PROTOCOL.md 10: the last ENDED_SESSIONS ids exactly; an id that leaves the
        list raises the floor, at or below which every START is refused as ended."""
        if len(self._ended) == ENDED_SESSIONS:
            self._ended_floor = max(self._ended_floor, self._ended[0])
        self._ended.append(session_id)

    def _is_ended(self, session_id: int) -> bool:
        return session_id <= self._ended_floor or session_id in self._ended

    def _fault(self, fault: Fault, channel: int, t: int) -> None:
        s = self._session
        first = self._faults == 0
        self._faults |= 1 << (fault - 1)
        if first:
            self._fault_channel = channel
        self._log(t, "fault", fault=Fault(fault).name, channel=channel)
        session_id = s.id if s is not None else 0
        if s is not None:
            delivered = (t - s.start_us) // 1000
            self._end_session(t, f"fault:{Fault(fault).name}")
            self._emit(FaultRaised, t, session_id=session_id, fault=int(fault), channel=channel)
            self._emit(
                Stopped,
                t,
                session_id=session_id,
                reason=int(StopReason.FAULT),
                delivered_ms=delivered,
            )
        else:
            self._emit(FaultRaised, t, session_id=session_id, fault=int(fault), channel=channel)
        self._set_state(State.FAULT, t)

    def _emit(self, cls: type[Event], t: int, **fields: Any) -> None:
        fields.setdefault("session_id", self.session_id)
        event = cls(seq=self._event_seq, time_ms=self._time_ms(t), **fields)
        self._event_seq = (self._event_seq + 1) & 0xFFFF
        self._pending.append(event)

    def _time_ms(self, t: int) -> int:
        """The unit's clock on the wire: whole ms since boot, from clock_start_ms,
        wrapping at 2^32 (PROTOCOL.md 5.2)."""
        return ((t - self._boot_us) // 1000 + self.config.clock_start_ms) & 0xFFFFFFFF

    def _flush_events(self) -> None:
        for event in self._pending:
            self._outbox += encode(event)
        self._pending.clear()

    def _log(self, t: int, kind: str, **data: Any) -> None:
        entry = LogEntry(t / _US, kind, data)
        self.log.append(entry)
        for listener in self.listeners:
            listener(entry)

    def _log_levels(self, t: int) -> None:
        s = self._session
        for number in range(1, self.config.channels + 1):
            ua = s.channels[number].output(t, s.deadline_us) if s and number in s.channels else 0
            if ua != self._logged_levels[number - 1]:
                self._logged_levels[number - 1] = ua
                self._log(t, "level", channel=number, ua=ua)
